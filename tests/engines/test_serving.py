"""Requests that arrive together share one decoding loop and get what they would alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest
import torch

from tests.engines.test_hf import PROMPTS
from tests.tiny_models import build_model
from upstream.engines.base import GenRequest
from upstream.engines.hf import HFEngine, LoadedModel, load_from_dir
from upstream.engines.serving import Batcher, Overloaded, Sampling, _safe_text, sample


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_from_dir(build_model(tmp_path_factory.mktemp("serving"), "llama"))


def alone(loaded: LoadedModel, request: GenRequest) -> tuple[list[int], str, str]:
    engine = HFEngine(loaded, batch_size=1)
    engine._fastgen = False  # transformers' own generate, one request at a time
    r = engine.generate([request])[0]
    return r.token_ids, r.text, r.finish_reason


def requests() -> list[GenRequest]:
    """Mixed lengths, and a conversation with a system prompt of its own."""
    out = [GenRequest.from_prompt(p, max_new_tokens=4 + 3 * i) for i, p in enumerate(PROMPTS)]
    out.append(
        GenRequest(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], 12
        )
    )
    return out


def test_concurrent_arrivals_get_their_one_by_one_tokens(loaded: LoadedModel) -> None:
    batcher = Batcher(loaded, batch_size=4, max_waiting=32)
    reqs = requests()
    tickets = []
    for n, r in enumerate(reqs):  # five at once, then one by one while they decode
        tickets.append(batcher.submit(r))
        if n >= 4:
            time.sleep(0.01)
    got = [t.result.result(timeout=60) for t in tickets]
    for r, g in zip(reqs, got, strict=True):
        ids, text, reason = alone(loaded, r)
        assert (g.token_ids, g.text, g.finish_reason) == (ids, text, reason)
    assert batcher.load() == (0, 0)  # finished rows are forgotten
    batcher.stop()


def test_stop_strings_and_streamed_pieces_add_up_to_the_text(loaded: LoadedModel) -> None:
    batcher = Batcher(loaded, batch_size=4)
    full = alone(loaded, GenRequest.from_prompt(PROMPTS[2], max_new_tokens=24))[1]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip()
    request = GenRequest.from_prompt(PROMPTS[2], max_new_tokens=24, stop=(stop,))
    pieces: list[str] = []
    ticket = batcher.submit(request, on_text=pieces.append)
    result = ticket.result.result(timeout=60)
    assert result.text == full[: full.index(stop)]
    assert result.finish_reason == "stop"
    assert "".join(pieces) == result.text
    assert len(pieces) > 1  # streamed as it came, not at the end
    batcher.stop()


def test_a_full_queue_is_refused_and_a_cancelled_request_leaves(loaded: LoadedModel) -> None:
    batcher = Batcher(loaded, batch_size=1, max_waiting=1)
    gate = threading.Event()
    first = batcher.submit(
        GenRequest.from_prompt("hi", max_new_tokens=8), on_text=lambda _: gate.wait(30)
    )
    deadline = time.time() + 30
    while batcher.load() != (1, 0) and time.time() < deadline:
        time.sleep(0.01)
    second = batcher.submit(GenRequest.from_prompt("yes", max_new_tokens=8))
    with pytest.raises(Overloaded, match="at most 1 may wait"):
        batcher.submit(GenRequest.from_prompt("no", max_new_tokens=8))
    first.cancel()
    gate.set()
    with pytest.raises(CancelledError):
        first.result.result(timeout=60)
    assert second.result.result(timeout=60).token_ids == alone(loaded, second.request)[0]
    batcher.stop()


def test_a_seed_gives_the_same_sample_whatever_else_decodes(loaded: LoadedModel) -> None:
    batcher = Batcher(loaded, batch_size=8)
    request = GenRequest.from_prompt(PROMPTS[0], max_new_tokens=16)
    hot = Sampling(temperature=1.5, seed=7)
    lone = batcher.submit(request, hot).result.result(timeout=60).token_ids
    crowd = [batcher.submit(GenRequest.from_prompt(p, max_new_tokens=16)) for p in PROMPTS]
    again = batcher.submit(request, hot)
    other = batcher.submit(request, Sampling(temperature=1.5, seed=8))
    assert again.result.result(timeout=60).token_ids == lone
    assert other.result.result(timeout=60).token_ids != lone
    # a nucleus of one token is greedy
    narrow = batcher.submit(request, Sampling(temperature=1.0, top_p=1e-6, seed=1))
    assert narrow.result.result(timeout=60).token_ids == alone(loaded, request)[0]
    for t in crowd:
        t.result.result(timeout=60)
    batcher.stop()


def test_any_temperature_the_api_admits_samples_a_token() -> None:
    """A temperature near 0 is greedy (it once divided into inf and made nan, failing
    every request in flight); the greatest one still samples from the whole vocabulary."""
    logits = torch.tensor([0.5, 3.0, -2.0, 3.0 - 1e-6])
    for temperature in (5e-324, 1e-300, 1e-30, 1e-9):
        for top_p in (1.0, 0.5, 5e-324):
            picked = sample(logits, Sampling(temperature, top_p), torch.Generator().manual_seed(0))
            assert picked == 1, (temperature, top_p)
    seen = {sample(logits, Sampling(2.0), torch.Generator().manual_seed(s)) for s in range(64)}
    assert seen == {0, 1, 2, 3}
    assert sample(torch.tensor([1.0, float("nan")]), Sampling(1.0), None) in (0, 1)


def test_a_request_whose_sampling_fails_fails_alone(
    loaded: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows decoding beside a failing one get their whole answers."""
    from upstream.engines import serving

    def poisoned(logits: torch.Tensor, sampling: Sampling, generator: object) -> int:
        raise RuntimeError("poisoned row")

    monkeypatch.setattr(serving, "sample", poisoned)
    batcher = Batcher(loaded, batch_size=8)
    others = [GenRequest.from_prompt(p, max_new_tokens=12) for p in PROMPTS]
    tickets = [batcher.submit(r) for r in others[:2]]
    bad = batcher.submit(GenRequest.from_prompt(PROMPTS[0], max_new_tokens=12), Sampling(1.0))
    tickets += [batcher.submit(r) for r in others[2:]]
    with pytest.raises(RuntimeError, match="poisoned row"):
        bad.result.result(timeout=60)
    for request, ticket in zip(others, tickets, strict=True):
        assert ticket.result.result(timeout=60).token_ids == alone(loaded, request)[0]
    batcher.stop()


def test_streamed_text_holds_back_what_may_change() -> None:
    assert _safe_text("hello wor", ("world",)) == "hello "
    assert _safe_text("caf\ufffd", ()) == "caf"
    assert _safe_text("a b", ("xyz",)) == "a b"


def test_bad_requests_are_refused_before_they_queue(loaded: LoadedModel) -> None:
    from upstream.errors import InvalidInput

    batcher = Batcher(loaded, max_prompt_chars=10)
    with pytest.raises(InvalidInput, match="limit is 10"):
        batcher.submit(GenRequest.from_prompt("x" * 11))
    assert batcher.load() == (0, 0)
