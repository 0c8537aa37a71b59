"""Serving's domain: the model ids it answers to, who it answers, and what it keeps."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.people import owner, person
from tests.test_contributions import make_adapter
from upstream import contributions as prs
from upstream import feedback, serving
from upstream.access import ANONYMOUS, Actor
from upstream.db.schema import Feedback, Report, Trace, utcnow
from upstream.engines.base import GenRequest
from upstream.errors import InvalidInput, NotFound, Unauthorized
from upstream.generation import generate_one
from upstream.hub import Hub
from upstream.registry import materialize, resolve

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def ask(hub: Hub, actor: Actor, model: str, max_tokens: int = 8) -> dict[str, Any]:
    body = serving.ChatIn.model_validate(
        {"model": model, "messages": QUESTION, "max_tokens": max_tokens}
    )
    pending = serving.start_chat(hub, actor, body)
    return serving.finish_chat(hub, pending, serving.wait(hub, pending))


@pytest.fixture
def candidate(tiny_hub: Hub, tmp_path: Path) -> tuple[int, str]:
    """An open adapter contribution to tiny, and its revision's hash."""
    with tiny_hub.session() as s:
        revision = resolve(s, "tiny")
        base_dir, rev = materialize(tiny_hub, revision), revision.hash
    adapter = make_adapter(base_dir, tmp_path / "adapter")
    data = prs.ContributionIn("tiny", "a fix", prs.Content(adapter_dir=adapter))
    cid = prs.open_contribution(tiny_hub, data, person(tiny_hub, "bo", "contributor"))["id"]
    return cid, rev


def test_a_contributions_candidate_is_served_with_its_adapter(
    tiny_hub: Hub, candidate: tuple[int, str]
) -> None:
    cid, rev = candidate
    listed = {m["id"] for m in serving.served_models(tiny_hub)}
    assert {"tiny", "tiny@latest", f"tiny@{rev[:12]}", f"tiny@{rev[:12]}+pr:{cid}"} <= listed
    boss = owner(tiny_hub)
    with_fix = ask(tiny_hub, boss, f"tiny@{rev[:12]}+pr:{cid}", 12)
    base = ask(tiny_hub, boss, "tiny", 12)
    adapter = prs.contribution_adapter(tiny_hub, f"pr:{cid}")
    expected = generate_one(tiny_hub, "tiny", GenRequest(QUESTION, 12), [adapter])["text"]
    assert with_fix["choices"][0]["message"]["content"] == expected
    assert base["choices"][0]["message"]["content"] != expected  # the adapter changes it
    assert with_fix["system_fingerprint"] == f"upstream:{rev[:12]}+pr:{cid}"
    with tiny_hub.session() as s:
        trace = s.get(Trace, with_fix["id"])
        assert trace is not None and trace.contribution_id == cid


@pytest.mark.parametrize(
    ("model", "error", "says"),
    [
        ("tiny+pr:999", NotFound, "999"),
        ("other+pr:{cid}", InvalidInput, "contribution to tiny"),
        ("tiny@0000000000+pr:{cid}", NotFound, "no revision"),
        ("tiny pr", InvalidInput, r"name@rev\+pr:N"),
    ],
)
def test_a_model_id_that_names_nothing_servable_is_refused(
    tiny_hub: Hub, candidate: tuple[int, str], model: str, error: type, says: str
) -> None:
    with pytest.raises(error, match=says):
        serving.resolve_served(tiny_hub, model.format(cid=candidate[0]))


def test_a_closed_contribution_is_not_served(tiny_hub: Hub, candidate: tuple[int, str]) -> None:
    cid, _ = candidate
    prs.close(tiny_hub, cid, owner(tiny_hub), "withdrawn")
    with pytest.raises(InvalidInput, match="closed"):
        serving.resolve_served(tiny_hub, f"tiny+pr:{cid}")
    assert not any("+pr:" in m["id"] for m in serving.served_models(tiny_hub))


def test_anonymous_serving_is_off_unless_set(tiny_hub: Hub) -> None:
    with pytest.raises(Unauthorized):
        ask(tiny_hub, ANONYMOUS, "tiny")
    hub = Hub.open(tiny_hub.settings.home, anonymous_serving=True)
    try:
        answer = ask(hub, ANONYMOUS, "tiny")
        # nobody but the holder of its feedback token may give feedback on it
        with pytest.raises(Unauthorized):
            feedback.give(hub, ANONYMOUS, feedback.FeedbackIn(response_id=answer["id"], value=1))
        bound = serving.authenticate_token(hub, answer["feedback_token"])
        sent = feedback.give(
            hub, bound, feedback.FeedbackIn(response_id=answer["id"], value=-1, correction="Paris")
        )
        with hub.session() as s:
            report = s.get(Report, sent["report_id"])
            assert report is not None and report.reporter == "anonymous"
            assert report.consent is False  # no token, no consent
    finally:
        hub.close()


def test_old_traces_go_with_their_feedback_and_their_reports_stay(tiny_hub: Hub) -> None:
    boss = owner(tiny_hub)
    old, new = ask(tiny_hub, boss, "tiny"), ask(tiny_hub, boss, "tiny")
    sent = feedback.give(
        tiny_hub, boss, feedback.FeedbackIn(response_id=old["id"], value=-1, correction="Paris")
    )
    with tiny_hub.session() as s, s.begin():
        trace = s.get(Trace, old["id"])
        assert trace is not None
        trace.created_at = utcnow() - timedelta(days=31)
    assert serving.purge_traces(tiny_hub) == 1
    with tiny_hub.session() as s:
        assert s.get(Trace, old["id"]) is None and s.get(Trace, new["id"]) is not None
        assert s.scalar(select(func.count()).select_from(Feedback)) == 0
        assert s.get(Report, sent["report_id"]) is not None
