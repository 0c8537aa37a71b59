"""What the pages keep from those who may not see it, as the API does: a dataset's
examples (it may hold served conversations), held-out cases decided by the suite's
model, cases of reports filed without consent, other hosts' links in a model card."""

from __future__ import annotations

import json

import httpx
from sqlalchemy import select

from tests.people import owner, person
from tests.server.conftest import serve
from tests.web.conftest import token
from upstream import accounts, evals, suites
from upstream import contributions as prs
from upstream.db.schema import Report
from upstream.hub import Hub
from upstream.registry import import_model
from upstream.releases import _public
from upstream.reports import parse_report, submit_one
from upstream.server.pages.catalog import markdown, render_card
from upstream.triage import confirm

SECRET = "a served conversation 7q3z"
DATASET = json.dumps(
    {"messages": [{"role": "user", "content": SECRET}, {"role": "assistant", "content": "ok"}]}
)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_a_dataset_s_examples_are_for_its_author_and_the_maintainers(tiny_hub: Hub) -> None:
    tokens = {n: token(tiny_hub, n, r) for n, r in [("bo", "contributor"), ("cy", "contributor")]}
    tokens["mia"] = token(tiny_hub, "mia", "maintainer")
    data = prs.ContributionIn("tiny", "from feedback", prs.Content(dataset=DATASET.encode()))
    opened = prs.open_contribution(tiny_hub, data, accounts.actor_named(tiny_hub, "bo"))["id"]
    with serve(tiny_hub) as base:
        seen = {
            who: SECRET in httpx.get(f"{base}/contributions/{opened}", headers=h).text
            for who, h in [("anonymous", {}), *((n, bearer(t)) for n, t in tokens.items())]
        }
    assert seen == {"anonymous": False, "cy": False, "bo": True, "mia": True}


def test_held_out_cases_follow_the_suite_s_model_and_consent(
    tiny_hub: Hub, tiny_model_dir: object
) -> None:
    import_model(tiny_hub, str(tiny_model_dir), "other")
    tom = token(tiny_hub, "tom", "maintainer", model="other")  # maintains `other` only
    mia = token(tiny_hub, "mia", "maintainer", model="tiny")
    cases = [
        suites.CaseIn([{"role": "user", "content": f"Say word {i} mk{i}zz."}], {"type": "exact",
                      "value": f"w{i}"}, [f"tg{i}x"])
        for i in range(12)
    ]  # fmt: skip
    suites.import_cases(tiny_hub, owner(tiny_hub), "s", cases, model="tiny", heldout_percent=50)
    # a private report's case, added to the suite: shown to maintainers only
    ana = person(tiny_hub, "ana", "reporter")
    item = {"model": "tiny", "prompt": "Private question pq9x?", "consent": False, "tags": ["p"]}
    report = submit_one(tiny_hub, parse_report({**item, "expected": {"type": "exact",
                        "value": "x"}}), ana, "cli").filed[0].id  # fmt: skip
    confirm(tiny_hub, report, owner(tiny_hub))
    suites.build_from_reports(tiny_hub, owner(tiny_hub), "s", "p", "tiny")
    run = evals.run_eval(tiny_hub, "other", "s", max_new_tokens=2)["run"]
    with tiny_hub.session() as s:
        version = suites.get_version(s, "s")
        all_cases = suites.version_cases(s, version)
        heldout = [
            c
            for c in all_cases
            if suites.case_split(c, 50, suites.split_secret(s)) == "heldout" and not c.report_id
        ]
    assert heldout
    # each case has its own tag: the eval page's per-tag rates must not name a hidden one
    marks = [c.messages[0]["content"].split()[-1].rstrip(".") for c in heldout]
    marks += [t for c in heldout for t in c.tags]
    with serve(tiny_hub) as base:
        for url in (f"/evals/{run}", "/suites/s"):
            as_tom = httpx.get(f"{base}{url}", headers=bearer(tom)).text
            as_mia = httpx.get(f"{base}{url}", headers=bearer(mia)).text
            anyone = httpx.get(f"{base}{url}").text
            assert all(m not in as_tom and m not in anyone for m in marks), url
            assert all(m in as_mia for m in marks), url
            assert "pq9x" not in as_tom and "pq9x" not in anyone and "pq9x" in as_mia, url


def test_a_model_card_links_and_loads_nothing_of_another_host() -> None:
    html = markdown.render(
        "# Card\n![badge](https://evil.example/t.png) [site](https://evil.example/) "
        "<https://evil.example/> <img src=https://evil.example/x.png>\n\n| a | b |\n|---|---|\n"
    )
    assert "<img" not in html and "href" not in html and "<table>" in html


def test_a_public_card_names_only_reports_anyone_may_read(tiny_hub: Hub) -> None:
    ana = person(tiny_hub, "ana", "reporter")
    filed = [
        submit_one(tiny_hub, parse_report({"model": "tiny", "prompt": p, "consent": c}), ana, "cli")
        .filed[0]
        .id
        for p, c in [("shared?", True), ("private?", False)]
    ]
    with tiny_hub.session() as s:
        assert _public(s, filed) == [filed[0]]
        hidden = s.get(Report, filed[1])
        assert hidden is not None and not hidden.consent
        assert s.scalars(select(Report.id)).all() == filed


def test_a_card_s_front_matter_is_shown_as_it_is_not_as_markdown() -> None:
    html, front = render_card("---\nlicense: mit\ntags:\n- a\n---\n# Title\n\nBody.\n")
    assert front == "license: mit\ntags:\n- a" and "<h1>Title</h1>" in html
    assert "license" not in html
    assert render_card(None) == ("", "") and render_card("# Only")[1] == ""
