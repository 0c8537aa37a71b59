"""/v1 over real HTTP against `upstream up`, driven by the official `openai` client:
chat (plain and streamed), the model list, errors, and feedback that becomes a report
whose reproduction gives back the served answer exactly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from sqlalchemy import func, select

from tests.people import owner, person
from tests.server.conftest import upstream_up
from upstream import accounts
from upstream.db.schema import Feedback, Trace
from upstream.engines.base import GenRequest
from upstream.generation import generate_one
from upstream.hub import Hub
from upstream.registry import import_model
from upstream.reports import get_report
from upstream.serving import feedback_token

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Live:
    base: str
    home: Path
    app_token: str  # a reporter's token, as an application holds it
    boss_token: str
    revision: str

    def client(self, token: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base}/v1", api_key=token or self.app_token, max_retries=0
        )

    def hub(self) -> Hub:
        return Hub.open(self.home)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("serving") / "home"
    hub = Hub.open(home)
    try:
        revision = import_model(hub, str(tiny_model_dir), "tiny").revision
        boss = owner(hub)
        person(hub, "app", "reporter")
        app_token = accounts.create_token(hub, boss, "app", consent=True)["token"]
        boss_token = accounts.create_token(hub, boss, boss.name)["token"]
    finally:
        hub.close()
    log = home.parent / "up.log"
    with upstream_up(home, log) as base:
        yield Live(base, home, app_token, boss_token, revision)
        assert " 500 " not in log.read_text()


def alone(live: Live, max_tokens: int) -> str:
    """What the engine answers for QUESTION, one request by itself."""
    hub = live.hub()
    try:
        request = GenRequest(messages=QUESTION, max_new_tokens=max_tokens)
        return str(generate_one(hub, "tiny", request)["text"])
    finally:
        hub.close()


def test_models_lists_every_servable_id(live: Live) -> None:
    ids = [m.id for m in live.client().models.list()]
    assert {"tiny", "tiny@latest", f"tiny@{live.revision[:12]}"} <= set(ids)
    assert live.client().models.retrieve("tiny@latest").id == "tiny@latest"


def test_a_chat_completion_is_the_engines_greedy_answer(live: Live) -> None:
    done = live.client().chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=12,  # type: ignore[arg-type]
    )
    assert done.id.startswith("chatcmpl-")
    assert done.choices[0].message.content == alone(live, 12)
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage is not None and 0 < done.usage.completion_tokens <= 12
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    assert done.system_fingerprint == f"upstream:{live.revision[:12]}"
    assert str((done.model_extra or {})["feedback_token"]).startswith("fb_")


def test_a_streamed_chat_has_one_id_and_adds_up_to_the_same_answer(live: Live) -> None:
    stream = live.client().chat.completions.create(
        model="tiny@latest",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == alone(live, 12)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1


def test_errors_come_in_openai_shape(live: Live) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        live.client().chat.completions.create(model="nope", messages=QUESTION)  # type: ignore[arg-type]
    assert "unknown model 'nope'" in missing.value.message
    with pytest.raises(openai.AuthenticationError):
        live.client("up_not-a-real-token").chat.completions.create(
            model="tiny",
            messages=QUESTION,  # type: ignore[arg-type]
        )
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        live.client().chat.completions.create(
            model="tiny",
            messages=QUESTION,
            temperature=5,  # type: ignore[arg-type]
        )
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    anonymous = httpx.post(
        f"{live.base}/v1/chat/completions", json={"model": "tiny", "messages": QUESTION}
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"


def chat(live: Live, max_tokens: int = 10) -> Any:
    return live.client().chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=max_tokens,  # type: ignore[arg-type]
    )


def test_feedback_from_a_browser_with_only_the_signed_token(live: Live) -> None:
    done = chat(live)
    token = (done.model_extra or {})["feedback_token"]
    post = {"response_id": done.id, "feedback_id": "b-1", "value": 1}
    sent = httpx.post(
        f"{live.base}/v1/feedback", json=post, headers={"Authorization": f"Bearer {token}"}
    )
    assert sent.status_code == 200, sent.text
    assert sent.json()["kind"] == "thumb" and sent.json()["report_id"] is None
    again = httpx.post(
        f"{live.base}/v1/feedback",
        json={**post, "value": 1, "comment": "good"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert again.json()["created"] is False and again.json()["id"] == sent.json()["id"]
    hub = live.hub()
    try:
        with hub.session() as s:
            n = s.scalar(select(func.count()).where(Feedback.trace_id == done.id))
            assert n == 1  # the same feedback id twice: one row
            trace = s.get(Trace, done.id)
            assert trace is not None and trace.attributes["gen_ai.response.id"] == done.id
            assert trace.attributes["gen_ai.usage.output_tokens"] == trace.completion_tokens
        # the token is good for this response only, and only while it lasts
        other = chat(live)
        refused = httpx.post(
            f"{live.base}/v1/feedback",
            json={"response_id": other.id, "value": -1},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert refused.status_code == 403
        expired = feedback_token(hub, done.id, now=time.time() - 2 * 3600)
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        for bad in (expired, forged):
            r = httpx.post(
                f"{live.base}/v1/feedback", json=post, headers={"Authorization": f"Bearer {bad}"}
            )
            assert r.status_code == 401, r.text
    finally:
        hub.close()
    assert httpx.post(f"{live.base}/v1/feedback", json=post).status_code == 401  # no token at all


def test_a_thumbs_down_with_a_correction_becomes_a_report_that_reproduces(live: Live) -> None:
    done = chat(live, max_tokens=10)
    served = done.choices[0].message.content
    token = (done.model_extra or {})["feedback_token"]
    sent = httpx.post(
        f"{live.base}/v1/feedback",
        json={"response_id": done.id, "value": -1, "correction": "Paris", "comment": "wrong"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert sent.status_code == 200, sent.text
    report_id = sent.json()["report_id"]
    assert report_id is not None and sent.json()["negative"] is True
    boss = {"Authorization": f"Bearer {live.boss_token}"}
    deadline = time.monotonic() + 120
    while True:
        report = httpx.get(f"{live.base}/api/reports/{report_id}", headers=boss).json()
        if report["status"] != "new":
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.3)
    assert report["source"] == "feedback" and report["reporter"] == "app"
    assert report["expected"] == {"type": "exact", "value": "Paris"}
    assert report["observed"] == served
    assert report["variants"][0]["output"] == served  # reproduced exactly as served
    assert report["status"] == "reproduced" and report["reproduction_rate"] == 1.0
    assert report["consent"] is True  # the app's token consented


def test_stop_strings_and_seeded_sampling_over_http(live: Live) -> None:
    full = alone(live, 24)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = live.client().chat.completions.create(
        model="tiny",
        messages=QUESTION,
        max_tokens=24,
        stop=[stop],  # type: ignore[arg-type]
    )
    assert cut.choices[0].message.content == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"

    def sample(seed: int) -> str:
        done = live.client().chat.completions.create(
            model="tiny",
            messages=QUESTION,  # type: ignore[arg-type]
            max_tokens=16,
            temperature=1.5,
            seed=seed,
        )
        return done.choices[0].message.content or ""

    assert sample(3) == sample(3) != sample(4)
    with pytest.raises(openai.UnprocessableEntityError):
        live.client().chat.completions.create(
            model="tiny",
            messages=QUESTION,
            n=2,  # type: ignore[arg-type]
        )


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of this machine's processes (Linux's /proc)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:  # it ended meanwhile
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            out[int(entry.name)] = (parent, [a.decode(errors="replace") for a in argv if a])
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
def test_the_server_embeds_reports_in_a_child_process_with_the_same_vectors(live: Live) -> None:
    from upstream.embeddings import embed, from_bytes

    prompt = "Which ocean is the largest? Answer with one word."
    auth = {"Authorization": f"Bearer {live.app_token}"}
    r = httpx.post(
        f"{live.base}/api/reports",
        json={"model": "tiny", "prompt": prompt},
        headers=auth,
        timeout=60,
    )
    assert r.status_code == 201, r.text
    port = live.base.rsplit(":", 1)[1]
    procs = _processes()
    server = [pid for pid, (_, argv) in procs.items() if "up" in argv and port in argv]
    assert len(server) == 1
    children = [argv for parent, argv in procs.values() if parent == server[0]]
    assert [a[-2:] for a in children] == [["-m", "upstream.embeddings"]]
    hub = live.hub()
    try:
        with hub.session() as s:
            stored = get_report(s, r.json()["id"]).embedding
    finally:
        hub.close()
    assert stored is not None
    np.testing.assert_allclose(from_bytes(stored), embed([prompt])[0], atol=1e-6)
