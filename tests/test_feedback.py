"""Feedback on served answers: values, idempotence, reports, triage, data, and a fix."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from tests.people import owner, person
from upstream import accounts, feedback, serving
from upstream.access import Actor
from upstream.db.schema import Report, Trace
from upstream.errors import Forbidden, InvalidInput, NotFound
from upstream.hub import Hub
from upstream.reproduction import expect

PROMPTS = ["Say red.", "Say blue.", "Name a fruit.", "Say green."]
ANSWERS = ["red", "blue", "apple", "green"]


def app_actor(hub: Hub, consent: bool = True) -> Actor:
    """The account an application serves its users through, acting by its token."""
    person(hub, "app", "reporter")
    made = accounts.create_token(hub, owner(hub), "app", consent=consent, license="CC0-1.0")
    return accounts.authenticate(hub, made["token"])


def served(hub: Hub, actor: Actor, prompt: str, max_tokens: int = 8, **kw: Any) -> dict[str, Any]:
    body = serving.ChatIn(
        model="tiny",
        messages=[{"role": "user", "content": prompt}],  # type: ignore[list-item]
        max_tokens=max_tokens,
        **kw,
    )
    pending = serving.start_chat(hub, actor, body)
    return serving.finish_chat(hub, pending, serving.wait(hub, pending))


def say(hub: Hub, actor: Actor, response: str, value: Any, **kw: Any) -> dict[str, Any]:
    return feedback.give(hub, actor, feedback.FeedbackIn(response_id=response, value=value, **kw))


@pytest.mark.parametrize(
    ("value", "correction", "kind", "negative"),
    [
        (1, None, "thumb", False),
        (-1, None, "thumb", True),
        (0.9, None, "score", False),
        (0.2, None, "score", True),
        ("too long", None, "label", False),
        ("too long", "Paris", "label", True),
    ],
)
def test_what_a_value_means(value: Any, correction: str | None, kind: str, negative: bool) -> None:
    assert feedback.read_value(value, correction)[::3] == (kind, negative)


@pytest.mark.parametrize("value", [2, -0.5, float("nan"), "", "x" * 101])
def test_a_value_out_of_range_is_refused(value: Any) -> None:
    with pytest.raises(InvalidInput, match="value"):
        feedback.read_value(value, None)


def test_short_corrections_are_exact_and_long_ones_similar() -> None:
    assert feedback.check_for(" Paris ") == {"type": "exact", "value": "Paris"}
    long = "The capital of France is Paris, on the Seine."
    assert feedback.check_for(long)["type"] == "similar"


def test_feedback_is_updated_by_its_id_and_files_one_report(tiny_hub: Hub) -> None:
    app = app_actor(tiny_hub)
    answer = served(tiny_hub, app, "Say red.")
    first = say(tiny_hub, app, answer["id"], 1, feedback_id="f1")
    assert (first["created"], first["report_id"]) == (True, None)
    down = say(tiny_hub, app, answer["id"], -1, feedback_id="f1", correction="red")
    assert down["created"] is False and down["id"] == first["id"]
    assert down["report_id"] is not None
    again = say(tiny_hub, app, answer["id"], -1, feedback_id="f1", correction="red")
    assert again["report_id"] == down["report_id"]  # one report, named again
    with tiny_hub.session() as s:
        report = s.get(Report, down["report_id"])
        assert report is not None
        assert (report.source, report.reporter, report.license) == ("feedback", "app", "CC0-1.0")
        assert report.consent is True and report.expected == {"type": "exact", "value": "red"}
        assert report.observed == answer["choices"][0]["message"]["content"]
        assert report.settings == {"max_new_tokens": 8}
    rows = feedback.list_feedback(tiny_hub, owner(tiny_hub), "tiny")
    assert [r["feedback_id"] for r in rows] == ["f1"]


def test_who_may_give_and_read_feedback(tiny_hub: Hub) -> None:
    app = app_actor(tiny_hub)
    answer = served(tiny_hub, app, "Say red.")
    stranger = person(tiny_hub, "eve", "contributor")
    with pytest.raises(Forbidden, match="maintainer"):
        say(tiny_hub, stranger, answer["id"], -1)
    with pytest.raises(NotFound, match="no response"):
        say(tiny_hub, app, "chatcmpl-000", 1)
    bound = serving.authenticate_token(tiny_hub, answer["feedback_token"])
    assert say(tiny_hub, bound, answer["id"], 1)["kind"] == "thumb"
    other = served(tiny_hub, app, "Say blue.")
    with pytest.raises(Forbidden, match="feedback on response:"):
        say(tiny_hub, bound, other["id"], 1)
    with pytest.raises(Forbidden):  # a feedback token is good for nothing else
        feedback.list_feedback(tiny_hub, bound, "tiny")
    with pytest.raises(Forbidden, match="read traces"):
        feedback.list_feedback(tiny_hub, app, "tiny")
    maintainer = person(tiny_hub, "mia", "maintainer")
    assert say(tiny_hub, maintainer, other["id"], -1)["negative"] is True


def test_without_prompts_kept_nothing_is_runnable(tiny_hub: Hub) -> None:
    hub = Hub.open(tiny_hub.settings.home, trace_prompts=False)
    try:
        app = app_actor(hub)
        answer = served(hub, app, "Say red.")
        with hub.session() as s:
            trace = s.get(Trace, answer["id"])
            assert trace is not None and trace.messages is None and trace.output is None
            assert trace.completion_tokens > 0
        down = say(hub, app, answer["id"], -1, correction="red")
        assert down["negative"] is True and down["report_id"] is None
    finally:
        hub.close()


def test_a_thumbs_down_without_a_correction_waits_for_a_check(tiny_hub: Hub) -> None:
    app = app_actor(tiny_hub)
    answer = served(tiny_hub, app, "Say red.")
    down = say(tiny_hub, app, answer["id"], -1, comment="not a colour")
    tiny_hub.jobs.run_now(down["reproduction_job"])
    with tiny_hub.session() as s:
        report = s.get(Report, down["report_id"])
        assert report is not None and report.status == "needs_check"
        assert "not a colour" in report.description
    given = expect(tiny_hub, owner(tiny_hub), down["report_id"], {"type": "exact", "value": "red"})
    assert given["judged"]["result"] == "reproduced" and given["status"] == "reproduced"
    with pytest.raises(InvalidInput):
        expect(tiny_hub, owner(tiny_hub), down["report_id"], {"type": "nope"})


def test_stats_count_thumbs_per_revision_with_an_interval(tiny_hub: Hub) -> None:
    app = app_actor(tiny_hub)
    answers = [served(tiny_hub, app, p) for p in PROMPTS]
    for a, value in zip(answers, [1, -1, -1, 1], strict=True):
        say(tiny_hub, app, a["id"], value)
    [row] = feedback.stats(tiny_hub, owner(tiny_hub), "tiny")
    assert (row["responses"], row["thumbs"], row["thumbs_down"]) == (4, 4, 2)
    low, high = row["interval"]
    assert low < 0.5 < high and row["thumbs_down_rate"] == 0.5
    assert sum(c["size"] for c in row["clusters"]) == 2  # the two reports thumbs-down filed


def test_corrections_export_as_chat_and_preference_lines(tiny_hub: Hub) -> None:
    app = app_actor(tiny_hub, consent=False)
    answer = served(tiny_hub, app, "Say red.")
    say(tiny_hub, app, answer["id"], -1, correction="red")
    [chat] = feedback.export(tiny_hub, owner(tiny_hub), "chat", "tiny")
    assert chat["messages"][-1] == {"role": "assistant", "content": "red"}
    assert chat["metadata"]["consent"] is False and chat["metadata"]["license"] == "CC0-1.0"
    [pref] = feedback.export(tiny_hub, owner(tiny_hub), "preference", "tiny")
    assert pref["chosen"][0]["content"] == "red"
    assert pref["rejected"][0]["content"] == answer["choices"][0]["message"]["content"]
    with pytest.raises(InvalidInput, match="allowed chat, preference"):
        feedback.export(tiny_hub, owner(tiny_hub), "csv", "tiny")


def test_a_contribution_from_corrections_fixes_the_reports_they_filed(tiny_hub: Hub) -> None:
    app = app_actor(tiny_hub)
    reports = []
    for prompt, answer in zip(PROMPTS, ANSWERS, strict=True):
        a = served(tiny_hub, app, prompt)
        down = say(tiny_hub, app, a["id"], -1, correction=answer)
        tiny_hub.jobs.run_now(down["reproduction_job"])
        reports.append(down["report_id"])
    with tiny_hub.session() as s:
        rows = s.scalars(select(Report).where(Report.id.in_(reports)))
        assert {r.status for r in rows} == {"reproduced"}
    boss = owner(tiny_hub)
    recipe = {"learning_rate": 1e-2, "epochs": 20, "rank": 8, "replay": 0}
    opened = feedback.contribute(tiny_hub, boss, "tiny@latest", "say it", recipe=recipe)
    assert opened["examples"] == 4 and sorted(opened["fixes"]) == sorted(reports)
    tiny_hub.jobs.run_now(opened["job"])
    from upstream import contributions as prs

    with tiny_hub.session() as s:
        detail = prs.contribution_detail(prs.get_contribution(s, opened["id"]), boss)
    claims = next(x for x in detail["checks"]["suites"] if x["suite"].startswith("claims-"))
    assert claims["splits"]["all"]["fixed_count"] == len(reports), detail["checks"]["reasons"]


def test_the_cli_opens_a_contribution_from_feedback(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from typer.testing import CliRunner

    from upstream.cli import app

    api = app_actor(tiny_hub)
    answer = served(tiny_hub, api, "Say red.")
    down = say(tiny_hub, api, answer["id"], -1, correction="red")
    monkeypatch.setenv("UPSTREAM_HOME", str(tiny_hub.settings.home))
    args = ["contribute", "--model", "tiny@latest", "--from-feedback", "--title", "t"]
    result = CliRunner().invoke(app, [*args, "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    opened = json.loads(result.output)
    from upstream import contributions as prs

    with tiny_hub.session() as s:
        c = prs.get_contribution(s, opened["contribution"])
        assert c.fixes == [down["report_id"]] and c.kind == "dataset"
        assert "red" in prs.stored_dataset(tiny_hub, c.pushes[0].files)[0].messages[-1]["content"]
    exported = CliRunner().invoke(app, ["feedback", "export", "--format", "chat", "--json"])
    assert json.loads(exported.output)["count"] == 1
    refused = CliRunner().invoke(app, [*args, "--dataset", "x.jsonl"])
    assert isinstance(refused.exception, InvalidInput)
    assert "leave out --adapter/--dataset" in str(refused.exception)
