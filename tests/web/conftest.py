"""A real Chromium (Debian's, driven by Playwright) against a live hub, and a hub with one
of everything a page shows."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.people import owner, person
from tests.test_contributions import make_adapter
from tests.test_permissions import failed_release
from upstream import accounts, ci, evals, feedback, serving, suites
from upstream import contributions as prs
from upstream.comparisons import queue_compare
from upstream.hub import Hub
from upstream.registry import materialize, resolve
from upstream.reports import parse_report, submit_one

NEVER = {"type": "exact", "value": "Paris"}


def chromium_path() -> str:
    found = shutil.which("chromium")
    if found is None:  # a failure, not a skip: the browser tests are part of the suite
        pytest.fail("no chromium: scripts/test installs Debian's chromium (apt) as root")
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield b
        b.close()


def token(hub: Hub, name: str, role: str, model: str | None = None) -> str:
    person(hub, name, role, model)
    return str(accounts.create_token(hub, owner(hub), name)["token"])


@dataclass
class Filled:
    """A hub holding one of every object a page shows, and who may do what there."""

    hub: Hub
    report: int
    contribution: int
    run: int
    compare_job: int
    release: int
    tokens: dict[str, str]

    def urls(self) -> list[str]:
        """Every page of the hub, with an object of each kind."""
        return [
            "/",
            "/sign-in",
            "/models",
            "/models/tiny",
            "/reports",
            "/reports?status=reproduced&model=tiny",
            f"/reports/{self.report}",
            "/reports/new",
            "/suites",
            "/suites/web",
            "/evals",
            f"/evals/{self.run}",
            f"/compare/{self.compare_job}",
            "/contributions",
            f"/contributions/{self.contribution}",
            "/releases",
            f"/releases/{self.release}",
            "/leaderboard",
            "/feedback",
            f"/jobs/{self.compare_job}",
        ]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Filled]:
    """Built once for the tests of a module that only read it (they post no forms)."""
    from upstream.guard import ensure_guard_suite
    from upstream.registry import import_model

    tmp_path = tmp_path_factory.mktemp("filled")
    hub = Hub.open(tmp_path / "home", write_rate_per_minute=0)
    import_model(hub, str(tiny_model_dir), "tiny")
    ensure_guard_suite(hub, "tiny")
    boss = owner(hub)
    tokens = {
        "ana": token(hub, "ana", "reporter"),
        "bo": token(hub, "bo", "contributor"),
        "mia": token(hub, "mia", "maintainer"),
    }
    ana = accounts.actor_named(hub, "ana")
    item = {"model": "tiny", "prompt": "Capital of France?", "expected": NEVER, "tags": ["web"]}
    filed = submit_one(hub, parse_report({**item, "max_new_tokens": 8}), ana, "cli")
    report = filed.filed[0].id
    assert filed.job is not None
    hub.jobs.run_now(filed.job)
    cases = [
        suites.CaseIn([{"role": "user", "content": f"Say {w}."}], {"type": "exact", "value": w}, [])
        for w in ("yes", "no", "maybe", "blue")
    ]
    suites.import_cases(hub, boss, "web", cases, model="tiny", heldout_percent=25)
    run = evals.run_eval(hub, "tiny", "web", max_new_tokens=8)["run"]
    with hub.session() as s:
        adapter = make_adapter(materialize(hub, resolve(s, "tiny")), tmp_path / "adapter")
    bo = accounts.actor_named(hub, "bo")
    data = prs.ContributionIn("tiny", "shorter answers", prs.Content(adapter_dir=adapter))
    contribution = prs.open_contribution(hub, data, bo)["id"]
    ci.run_checks(hub, contribution, 1)
    compare_job = queue_compare(
        hub, boss, "tiny", "tiny", "web", cand_adapters=[f"pr:{contribution}"], max_new_tokens=8
    )
    hub.jobs.run_now(compare_job)
    release = failed_release(hub, contribution)
    body = serving.ChatIn.model_validate(
        {"model": "tiny", "messages": [{"role": "user", "content": "Capital of Italy?"}],
         "max_tokens": 6}
    )  # fmt: skip
    pending = serving.start_chat(hub, ana, body)
    answer = serving.finish_chat(hub, pending, serving.wait(hub, pending))
    feedback.give(
        hub,
        ana,
        feedback.FeedbackIn.model_validate(
            {"response_id": answer["id"], "value": -1, "correction": "Rome"}
        ),
    )
    yield Filled(hub, report, contribution, run, compare_job, release, tokens)
    hub.close()
