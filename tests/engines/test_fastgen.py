"""The lean greedy loop gives the tokens of `generate` one by one, in less work."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from tests.engines.test_hf import PROMPTS
from tests.tiny_models import FAMILIES, build_model
from upstream.engines import fastgen
from upstream.engines.base import GenRequest
from upstream.engines.fastgen import (
    ROOM,
    common_prefix_length,
    greedy_generate,
    length_chunks,
    new_cache,
    rows_within,
    supports,
)
from upstream.engines.hf import HFEngine, LoadedModel, load_from_dir
from upstream.hub import Hub
from upstream.registry import resolve


@dataclass
class Tiny:
    """A tiny model, PROMPTS with its chat template, and `generate`'s outputs for them."""

    loaded: LoadedModel
    prompts: list[list[int]]
    plain: list[list[int]]  # 16 tokens each (the model's own EOS is not reached)
    early_eos: list[int]  # EOS ids that end the outputs at several different steps
    expected: list[list[int]]  # up to 16 tokens each, with `early_eos`

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def pad(self) -> int:
        return int(self.loaded.tokenizer.pad_token_id)

    @property
    def eos(self) -> list[int]:
        return [int(self.loaded.tokenizer.eos_token_id)]


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    family = request.param
    loaded = load_from_dir(build_model(tmp_path_factory.mktemp(family), family))
    # every family the hub tests runs on the lean loop (docs/benchmarks.md says so)
    assert supports(loaded.model), family
    model, tok = loaded.model, loaded.tokenizer
    prompts = [HFEngine(loaded).encode(GenRequest.from_prompt(p)) for p in PROMPTS]
    plain = reference(model, prompts, 16, [tok.eos_token_id], tok.pad_token_id)
    assert all(len(p) == 16 for p in plain)
    early = sorted({tok.eos_token_id, plain[0][2], plain[3][5], plain[6][9]})
    expected = reference(model, prompts, 16, early, tok.pad_token_id)
    assert len({len(e) for e in expected}) >= 3  # rows really end at different steps
    return Tiny(loaded, prompts, plain, early, expected)


def reference(
    model: Any, prompts: list[list[int]], max_new_tokens: int, eos: list[int], pad: int
) -> list[list[int]]:
    """`generate` one prompt at a time, cut before the first EOS: the tokens to match."""
    import torch

    outputs = []
    for p in prompts:
        with torch.inference_mode():
            ids = model.generate(
                input_ids=torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        row = ids[0, len(p) :].tolist()
        ends = [n for n, t in enumerate(row) if t in eos]
        outputs.append(row[: ends[0]] if ends else row)
    return outputs


def test_equals_the_engine_one_by_one(tiny_hub: Hub) -> None:
    with tiny_hub.session() as s:
        rev = resolve(s, "tiny")
    engine = HFEngine.for_revision(tiny_hub, rev, batch_size=1)
    engine._fastgen = False  # the reference is transformers' own generate, one by one
    requests = [GenRequest.from_prompt(p, max_new_tokens=16) for p in PROMPTS]
    expected = [r.token_ids for r in engine.generate(requests)]
    model, tok = engine.loaded.model, engine.loaded.tokenizer
    eos = [tok.eos_token_id]
    prompts = [engine.encode(r) for r in requests]
    for batch_size in (1, 4, 32):
        got = greedy_generate(model, prompts, 16, eos, tok.pad_token_id, batch_size=batch_size)
        assert got == expected


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_rows_ending_at_different_steps_match_generate(tiny: Tiny, batch_size: int) -> None:
    # batch 3 of 10 prompts: rows leave and waiting prompts join the running batch
    got = greedy_generate(
        tiny.model, tiny.prompts, 16, tiny.early_eos, tiny.pad, batch_size=batch_size
    )
    assert got == tiny.expected


def test_max_new_tokens_cuts_every_row(tiny: Tiny) -> None:
    got = greedy_generate(tiny.model, tiny.prompts, 5, tiny.eos, tiny.pad, batch_size=4)
    assert got == [p[:5] for p in tiny.plain]
    one = greedy_generate(tiny.model, tiny.prompts, 1, tiny.eos, tiny.pad)
    assert one == [p[:1] for p in tiny.plain]


def test_stop_check_ends_a_row_after_the_token_it_saw(tiny: Tiny) -> None:
    stop_after = {i: 1 + i % 7 for i in range(len(tiny.prompts))}  # differs per prompt
    calls: list[tuple[int, list[int]]] = []

    def stop_check(index: int, tokens: list[int]) -> bool:
        calls.append((index, list(tokens)))
        return len(tokens) >= stop_after[index]

    got = greedy_generate(
        tiny.model, tiny.prompts, 12, tiny.eos, tiny.pad, stop_check, batch_size=4
    )
    assert got == [p[: stop_after[i]] for i, p in enumerate(tiny.plain)]
    # called with the prompt's own index and its tokens so far, once per new token
    assert all(tokens == tiny.plain[i][: len(tokens)] for i, tokens in calls)
    assert len(calls) == sum(stop_after.values())


def test_results_come_back_in_prompt_order(tiny: Tiny) -> None:
    backward = greedy_generate(
        tiny.model, tiny.prompts[::-1], 16, tiny.early_eos, tiny.pad, batch_size=3
    )
    assert backward == tiny.expected[::-1]


def test_prompts_without_a_shared_prefix(tiny: Tiny) -> None:
    # plain text prompts without a template: other first tokens, one a single token
    tok = tiny.loaded.tokenizer
    prompts = [tok(p)["input_ids"][: 1 + i] for i, p in enumerate(PROMPTS)]
    assert common_prefix_length(prompts) == 0 and len(prompts[0]) == 1
    plain = reference(tiny.model, prompts, 10, tiny.eos, tiny.pad)
    eos = sorted({*tiny.eos, *(p[3] for p in plain[1:3] if len(p) > 3)})
    expected = reference(tiny.model, prompts, 10, eos, tiny.pad)
    assert greedy_generate(tiny.model, prompts, 10, eos, tiny.pad, batch_size=4) == expected


def test_a_row_that_ends_at_once_and_identical_prompts(tiny: Tiny) -> None:
    eos = [*tiny.eos, tiny.plain[0][0]]  # the first prompt's first token: an empty output
    prompts = [tiny.prompts[0], tiny.prompts[1], tiny.prompts[0], tiny.prompts[1]]
    got = greedy_generate(tiny.model, prompts, 4, eos, tiny.pad, batch_size=2)
    expected = reference(tiny.model, prompts, 4, eos, tiny.pad)
    assert got == expected and got[0] == [] and got[2] == []


@pytest.mark.parametrize("cost", [0, 4, 10_000])
def test_prompts_of_other_lengths_are_prefilled_apart_with_the_same_tokens(
    tiny: Tiny, cost: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cost 0: one forward per prompt length; 10,000: every prompt in one padded forward
    monkeypatch.setattr(fastgen, "FORWARD_COST_TOKENS", cost)
    forwards: list[int] = []
    real = fastgen._Decoder._prefill_chunk

    def spy(self: Any, group: list[int], own: list[int]) -> Any:
        forwards.append(len(group))
        return real(self, group, own)

    monkeypatch.setattr(fastgen._Decoder, "_prefill_chunk", spy)
    got = greedy_generate(tiny.model, tiny.prompts, 16, tiny.early_eos, tiny.pad, batch_size=32)
    assert got == tiny.expected
    lengths = {len(p) for p in tiny.prompts}
    assert sum(forwards) == len(tiny.prompts)
    if cost == 0:
        assert len(forwards) == len(lengths)
    elif cost == 4:  # alike lengths share a forward, far ones do not
        assert 1 < len(forwards) < len(lengths)
    else:
        assert forwards == [len(tiny.prompts)]


def test_a_far_longer_prompt_waits_for_a_batch_of_its_own(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    tok = tiny.loaded.tokenizer
    context = tok(" ".join(PROMPTS) * 4)["input_ids"]
    long = [p[:-3] + context + p[-3:] for p in tiny.prompts[:2]]  # inside the user turn
    prompts = [*tiny.prompts, *long]
    limit = fastgen.WIDTH_SPREAD * max(len(p) + 16 for p in tiny.prompts) + fastgen.WIDTH_SLACK
    assert min(len(p) for p in long) > limit  # too long to join the short ones' batch
    groups: list[list[int]] = []
    real = fastgen._Decoder._prefill

    def spy(self: Any, group: list[int]) -> Any:
        groups.append(sorted(group))
        return real(self, group)

    monkeypatch.setattr(fastgen._Decoder, "_prefill", spy)
    got = greedy_generate(tiny.model, prompts, 16, tiny.early_eos, tiny.pad, batch_size=32)
    assert got == reference(tiny.model, prompts, 16, tiny.early_eos, tiny.pad)
    short, far = set(range(len(tiny.prompts))), {len(tiny.prompts), len(tiny.prompts) + 1}
    assert groups == [sorted(short), sorted(far)]  # the long ones after the short ones ended


def test_length_chunks_finds_the_cheapest_split() -> None:
    import itertools
    import random

    def cost(lengths: list[int], sizes: list[int], per_forward: int) -> int:
        total, start = 0, 0
        for size in sizes:
            total += size * lengths[start + size - 1] + per_forward
            start += size
        return total

    rng = random.Random(0)
    for _ in range(200):
        lengths = sorted(rng.randint(1, 60) for _ in range(rng.randint(1, 7)))
        per_forward = rng.choice([0, 5, 32, 500])
        sizes = length_chunks(lengths, per_forward)
        assert sum(sizes) == len(lengths) and all(s > 0 for s in sizes)
        every = [  # every split into consecutive runs, by its cut points
            [b - a for a, b in itertools.pairwise([0, *cuts, len(lengths)])]
            for k in range(len(lengths))
            for cuts in itertools.combinations(range(1, len(lengths)), k)
        ]
        assert cost(lengths, sizes, per_forward) == min(
            cost(lengths, s, per_forward) for s in every
        )
    assert length_chunks([14] * 100) == [100]  # alike: one forward
    assert length_chunks([12] * 60 + [500]) == [60, 1]  # one long prompt runs alone
    assert length_chunks([]) == []
    with pytest.raises(ValueError, match="ascending"):
        length_chunks([3, 2])


def small_model(family: str = "llama", **config: Any) -> Any:
    import transformers as t

    kind = {"llama": t.LlamaConfig, "mistral": t.MistralConfig}[family]
    sizes = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    heads = dict(num_attention_heads=2, num_key_value_heads=1)
    return t.AutoModelForCausalLM.from_config(kind(vocab_size=64, **sizes, **heads, **config))


def test_models_and_settings_it_cannot_match_are_left_to_generate() -> None:
    assert supports(small_model())
    assert supports(small_model(attn_implementation="eager"))
    # a sliding window counts padding columns, which this loop adds between tokens
    assert not supports(small_model("mistral", sliding_window=8))
    # generation settings that change greedy `generate`'s choice of token
    penalised = small_model()
    penalised.generation_config.repetition_penalty = 1.3
    assert not supports(penalised)
    beams = small_model()
    beams.generation_config.num_beams = 4
    assert not supports(beams)
    neutral = small_model()
    neutral.generation_config.repetition_penalty = 1.0
    assert supports(neutral)


def test_bad_arguments_are_refused() -> None:
    model = object()  # never reached
    with pytest.raises(ValueError, match="max_new_tokens 0"):
        greedy_generate(model, [[1, 2]], 0, [], 0)
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        greedy_generate(model, [[1, 2], []], 4, [], 0)
    assert greedy_generate(model, [], 4, [], 0) == []


def test_common_prefix_length() -> None:
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([[1, 2], [3]]) == 0
    assert common_prefix_length([[5, 6]]) == 2


def test_cache_layers_append_in_place_and_make_room_when_full() -> None:
    import torch

    cache = new_cache(small_model().config)
    layer = cache.layers[0]
    k, v = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    keys, values = cache.update(k, v, 0)
    assert torch.equal(keys, k) and torch.equal(values, v)
    storage, written = layer._kv[0], [k]
    for _ in range(ROOM):
        new = torch.randn(2, 1, 1, 4)
        keys, values = cache.update(new, -new, 0)
        written.append(new)
    assert layer._kv[0] is storage  # ROOM columns appended without a copy
    new = torch.randn(2, 1, 1, 4)
    keys, values = cache.update(new, -new, 0)
    written.append(new)
    assert layer._kv[0] is not storage  # full: copied into a larger one
    assert torch.equal(keys, torch.cat(written, dim=2))
    assert torch.equal(values[:, :, 3:], -torch.cat(written[1:], dim=2))
    assert cache.get_seq_length() == 4 + ROOM
    # the loop drops columns by setting keys and values; the next update still appends
    layer.keys, layer.values = keys[:, :, 1:], values[:, :, 1:]
    assert cache.get_seq_length() == 3 + ROOM
    keys, _ = cache.update(new, new, 0)
    assert torch.equal(keys, torch.cat([*written, new], dim=2)[:, :, 1:])


def test_rows_within_counts_a_row_s_keys_and_values() -> None:
    model = small_model()  # 1 layer, 1 key-value head of 8 dimensions, float32
    per_row = 1 * 2 * 1 * 8 * 4 * (100 + 100 // 8 + ROOM)
    assert rows_within(model, 100, per_row * 5) == 5
    assert rows_within(model, 100, per_row * 5 - 1) == 4
    assert rows_within(model, 100, 1) == 1  # one row always runs
