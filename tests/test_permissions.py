"""Every write of the API and the CLI × every role, against the one rule book.

The lists of write routes and commands come from the app's own route table and the
CLI's own command list; each must be declared below with the action of
`upstream.access.RULES` it is decided by and a request that exercises it. A route or
command that is not declared fails `test_every_write_is_declared`; one that does not
ask the rule book lets through someone the rule refuses, or refuses someone it allows,
and fails the matrix.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.people import owner, person
from tests.server.conftest import serve
from tests.test_cli import all_commands
from upstream import accounts, evals, serving, suites
from upstream import contributions as prs
from upstream.access import ANONYMOUS, RULES, Actor, may
from upstream.db.schema import Release
from upstream.errors import Forbidden, Unauthorized
from upstream.evals import queue_eval
from upstream.hub import Hub
from upstream.registry import resolve
from upstream.reports import parse_report, submit_one
from upstream.server.app import create_app

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}
DATASET = "\n".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for q, a in [("hi", "hello"), ("sky?", "blue")]
)
REPORTER, CONTRIBUTOR = "rita", "cory"


@dataclass
class World:
    """A hub with one of everything a write can act on, and who owns what."""

    hub: Hub
    report: int
    contribution: int
    victim_token: int  # a token of rita's, for revoke routes
    job: int  # an evaluation cory queued
    release: int  # a release whose build failed
    response: str  # an answer served to rita
    run: int  # an evaluation run of suite s
    case: str  # its case


def failed_release(hub: Hub, contribution: int) -> int:
    """A release of `contribution` to `tiny` whose build failed (none is built)."""
    with hub.session() as s, s.begin():
        base = resolve(s, "tiny")
        row = Release(
            model_id=base.model_id,
            base_revision_id=base.id,
            method="linear",
            contributions=[contribution],
            state="failed",
            author=owner(hub).name,
        )
        s.add(row)
        s.flush()
        return row.id


def make_world(hub: Hub) -> World:
    boss = owner(hub)
    rita = person(hub, REPORTER, "reporter")
    cory = person(hub, CONTRIBUTOR, "contributor")
    person(hub, "mia", "maintainer")
    person(hub, "tom", "maintainer", model="tiny")  # a maintainer of tiny only
    person(hub, "ada", "admin")
    report = (
        submit_one(
            hub, parse_report({"model": "tiny", "prompt": "hi?", "expected": NEVER}), rita, "cli"
        )
        .filed[0]
        .id
    )
    data = prs.ContributionIn("tiny", "a fix", prs.Content(dataset=DATASET.encode()))
    contribution = prs.open_contribution(hub, data, cory)["id"]
    cases = [suites.CaseIn([{"role": "user", "content": "hi"}], NEVER, [])]
    suites.import_cases(hub, boss, "s", cases, model="tiny")
    victim = accounts.create_token(hub, boss, REPORTER, ["read"])["id"]
    job = queue_eval(hub, cory, "tiny", "s")
    release = failed_release(hub, contribution)  # to ship (refused)
    body = serving.ChatIn(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)  # type: ignore[list-item]
    pending = serving.start_chat(hub, rita, body)
    response = serving.finish_chat(hub, pending, serving.wait(hub, pending))["id"]
    run = evals.run_eval(hub, "tiny", "s", max_new_tokens=4)["run"]
    case = suites.case_id(cases[0].messages, cases[0].expected)
    return World(hub, report, contribution, victim, job, release, response, run, case)


# The actors of the matrix: (label, name or None for anonymous, token scopes or None).
ACTORS = [
    ("anonymous", None, None),
    ("reporter", REPORTER, None),
    ("contributor", CONTRIBUTOR, None),
    ("maintainer", "mia", None),
    ("maintainer of tiny", "tom", None),
    ("admin", "ada", None),
    ("admin, read-only token", "ada", ["read"]),
    ("maintainer, report-only token", "mia", ["read", "report"]),
]


@dataclass(frozen=True)
class Write:
    """How to exercise one write: the rule deciding it, and the request."""

    action: str
    owner: str | None = None  # whose object it acts on (a report's reporter, …)
    body: Callable[[World], Any] | None = None
    path: Callable[[World], str] | None = None  # the concrete path, ids filled in
    model: str | None = "tiny"  # the model whose roles count (None: the hub's)
    raw: bytes | None = None  # a raw body instead of JSON


def _dataset_body(w: World) -> dict[str, Any]:
    return {"model": "tiny", "title": "another fix", "dataset": DATASET}


ROUTES: dict[tuple[str, str], Write] = {
    ("PUT", "/api/models/{name}/tags/{tag}"): Write(
        "models.tag",
        body=lambda w: {"revision": "latest"},
        path=lambda w: "/api/models/tiny/tags/t",
    ),
    ("DELETE", "/api/models/{name}/tags/{tag}"): Write(
        "models.tag", path=lambda w: "/api/models/tiny/tags/t"
    ),
    ("POST", "/api/models/import"): Write(
        "models.import", body=lambda w: {"source": "bundled:smollm2-135m-instruct", "name": "s2"}
    ),
    ("POST", "/api/reports"): Write(
        "reports.file", body=lambda w: {"model": "tiny", "prompt": "yo?", "expected": NEVER}
    ),
    ("POST", "/api/reports/{report_id}/confirm"): Write(
        "reports.confirm", owner=REPORTER, path=lambda w: f"/api/reports/{w.report}/confirm"
    ),
    ("POST", "/api/reports/{report_id}/close"): Write(
        "reports.close",
        owner=REPORTER,
        body=lambda w: {"reason": "no"},
        path=lambda w: f"/api/reports/{w.report}/close",
    ),
    ("POST", "/api/reports/{report_id}/reproduce"): Write(
        "reports.reproduce", path=lambda w: f"/api/reports/{w.report}/reproduce"
    ),
    ("POST", "/api/reports/{report_id}/expect"): Write(
        "reports.expect",
        owner=REPORTER,
        body=lambda w: {"check": NEVER},
        path=lambda w: f"/api/reports/{w.report}/expect",
    ),
    ("POST", "/v1/chat/completions"): Write(
        "models.serve",
        body=lambda w: {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 2,
        },
    ),
    ("POST", "/v1/feedback"): Write(
        "feedback.give", owner=REPORTER, body=lambda w: {"response_id": w.response, "value": 1}
    ),
    ("POST", "/api/reports/{report_id}/rescore"): Write(
        "reports.rescore", body=lambda w: {}, path=lambda w: f"/api/reports/{w.report}/rescore"
    ),
    ("POST", "/api/suites/{name}/build"): Write(
        "suites.build",
        body=lambda w: {"tag": "x", "model": "tiny"},
        path=lambda w: "/api/suites/b/build",
    ),
    ("POST", "/api/suites/{name}/cases"): Write(
        "suites.build",
        body=lambda w: {"cases": [{"prompt": "yo", "expected": NEVER}]},
        path=lambda w: "/api/suites/s/cases",
    ),
    ("POST", "/api/releases"): Write(
        "releases.cut", body=lambda w: {"model": "tiny", "contributions": [w.contribution]}
    ),
    ("POST", "/api/releases/{release_id}/ship"): Write(
        "releases.cut", path=lambda w: f"/api/releases/{w.release}/ship"
    ),
    ("POST", "/api/jobs/{job_id}/cancel"): Write(
        "jobs.cancel",
        owner=CONTRIBUTOR,
        model=None,
        path=lambda w: f"/api/jobs/{w.job}/cancel",
    ),
    ("POST", "/api/comparisons"): Write(
        "evals.run", body=lambda w: {"base": "tiny", "candidate": "tiny", "suite": "s"}
    ),
    ("POST", "/api/evals"): Write("evals.run", body=lambda w: {"model": "tiny", "suite": "s"}),
    ("POST", "/api/contributions"): Write("contributions.open", body=_dataset_body),
    ("POST", "/api/uploads"): Write("contributions.open", model=None, raw=b"weights"),
    ("POST", "/api/contributions/{contribution_id}/push"): Write(
        "contributions.push",
        owner=CONTRIBUTOR,
        body=lambda w: {"dataset": DATASET},
        path=lambda w: f"/api/contributions/{w.contribution}/push",
    ),
    ("POST", "/api/contributions/{contribution_id}/check"): Write(
        "contributions.check",
        owner=CONTRIBUTOR,
        path=lambda w: f"/api/contributions/{w.contribution}/check",
    ),
    ("POST", "/api/contributions/{contribution_id}/approve"): Write(
        "contributions.approve",
        owner=CONTRIBUTOR,
        body=lambda w: {},
        path=lambda w: f"/api/contributions/{w.contribution}/approve",
    ),
    ("POST", "/api/contributions/{contribution_id}/reject"): Write(
        "contributions.reject",
        owner=CONTRIBUTOR,
        body=lambda w: {"reason": "no"},
        path=lambda w: f"/api/contributions/{w.contribution}/reject",
    ),
    ("POST", "/api/contributions/{contribution_id}/close"): Write(
        "contributions.close",
        owner=CONTRIBUTOR,
        body=lambda w: {},
        path=lambda w: f"/api/contributions/{w.contribution}/close",
    ),
    ("POST", "/api/users"): Write(
        "users.manage", body=lambda w: {"name": "neo", "role": "reporter"}
    ),
    ("PUT", "/api/users/{name}/role"): Write(
        "users.manage", body=lambda w: {"role": "reporter"}, path=lambda w: "/api/users/rita/role"
    ),
    ("POST", "/api/tokens"): Write(
        "tokens.manage", owner=REPORTER, body=lambda w: {"user": REPORTER, "scopes": ["read"]}
    ),
    ("DELETE", "/api/tokens/{token_id}"): Write(
        "tokens.manage", owner=REPORTER, path=lambda w: f"/api/tokens/{w.victim_token}"
    ),
}


# The pages' forms: the same rules, posted by browsers signed in with a session cookie.
PAGES: dict[tuple[str, str], Write] = {
    ("POST", "/reports/new"): Write(
        "reports.file",
        body=lambda w: {
            "model": "tiny",
            "prompt": "yo?",
            "check_type": "exact",
            "check_value": NEVER["value"],
            "action": "file",
        },
    ),
    ("POST", "/reports/{report_id}/confirm"): Write(
        "reports.confirm", owner=REPORTER, path=lambda w: f"/reports/{w.report}/confirm"
    ),
    ("POST", "/reports/{report_id}/close"): Write(
        "reports.close",
        owner=REPORTER,
        body=lambda w: {"reason": "no"},
        path=lambda w: f"/reports/{w.report}/close",
    ),
    ("POST", "/reports/{report_id}/reproduce"): Write(
        "reports.reproduce", path=lambda w: f"/reports/{w.report}/reproduce"
    ),
    ("POST", "/reports/{report_id}/expect"): Write(
        "reports.expect",
        owner=REPORTER,
        body=lambda w: {"check_type": "exact", "check_value": NEVER["value"]},
        path=lambda w: f"/reports/{w.report}/expect",
    ),
    ("POST", "/suites"): Write(
        "suites.build", body=lambda w: {"name": "b", "tag": "x", "model": "tiny"}
    ),
    ("POST", "/evals/{run_id}/cases/{case_id}/full"): Write(
        "evals.run", path=lambda w: f"/evals/{w.run}/cases/{w.case}/full"
    ),
    ("POST", "/compare"): Write(
        "evals.run", body=lambda w: {"base": "tiny", "candidate": "tiny", "suite": "s"}
    ),
    ("POST", "/contributions/{contribution_id}/check"): Write(
        "contributions.check",
        owner=CONTRIBUTOR,
        path=lambda w: f"/contributions/{w.contribution}/check",
    ),
    ("POST", "/contributions/{contribution_id}/approve"): Write(
        "contributions.approve",
        owner=CONTRIBUTOR,
        path=lambda w: f"/contributions/{w.contribution}/approve",
    ),
    ("POST", "/contributions/{contribution_id}/reject"): Write(
        "contributions.reject",
        owner=CONTRIBUTOR,
        body=lambda w: {"reason": "no"},
        path=lambda w: f"/contributions/{w.contribution}/reject",
    ),
    ("POST", "/contributions/{contribution_id}/close"): Write(
        "contributions.close",
        owner=CONTRIBUTOR,
        path=lambda w: f"/contributions/{w.contribution}/close",
    ),
}
# Signing in and out changes only the browser's own session (a token decides sign-in).
SESSION = {("POST", "/sign-in"), ("POST", "/sign-out")}


def write_routes(app: Any) -> set[tuple[str, str]]:
    from fastapi import routing

    flatten = getattr(routing, "iter_route_contexts", None)
    routes = list(flatten(app.routes)) if flatten else list(app.routes)
    return {
        (method, route.path_format)
        for route in routes
        for method in (route.methods or set()) - {"GET", "HEAD"}
    }


def test_every_write_is_declared(tmp_path: Path) -> None:
    hub = Hub.open(tmp_path / "home")
    try:
        served = write_routes(create_app(hub))
    finally:
        hub.close()
    declared = ROUTES.keys() | PAGES.keys() | SESSION
    assert served - declared == set(), "write routes with no declared rule"
    assert declared - served == set(), "declared routes the app does not serve"
    commands = {" ".join(c) for c in all_commands()}
    undeclared = commands - COMMANDS.keys() - READS - LOCAL
    assert undeclared == set(), "commands with no declared rule (or READS/LOCAL)"
    assert (COMMANDS.keys() | READS | LOCAL) - commands == set(), "declared commands that are gone"
    for write in [*ROUTES.values(), *PAGES.values(), *COMMANDS.values()]:
        assert write.action in RULES


def _actor(hub: Hub, name: str | None, scopes: list[str] | None) -> Actor:
    if name is None:
        return ANONYMOUS
    actor = accounts.actor_named(hub, name)
    return Actor(actor.name, actor.role, frozenset(scopes) if scopes else None, actor.model_roles)


def test_every_write_route_for_every_role(tiny_hub: Hub) -> None:
    world = make_world(tiny_hub)
    headers: dict[str, dict[str, str]] = {}
    for label, name, scopes in ACTORS:
        if name is not None:
            made = accounts.create_token(tiny_hub, owner(tiny_hub), name, scopes)
            headers[label] = {"Authorization": f"Bearer {made['token']}"}
        else:
            headers[label] = {}
    wrong: list[str] = []
    with serve(tiny_hub) as server, httpx.Client(base_url=server, timeout=60) as client:
        for (method, route), write in ROUTES.items():
            path = write.path(world) if write.path else route
            for label, name, scopes in ACTORS:
                actor = _actor(tiny_hub, name, scopes)
                allowed = may(actor, write.action, write.model, write.owner)
                r = client.request(
                    method,
                    path,
                    headers=headers[label],
                    json=write.body(world) if write.body else None,
                    content=write.raw,
                )
                if allowed and r.status_code in (401, 403):
                    wrong.append(f"{method} {path} as {label}: refused {r.status_code} {r.text}")
                if not allowed:
                    expected = 401 if name is None else 403
                    if r.status_code != expected:
                        wrong.append(f"{method} {path} as {label}: {r.status_code}, not {expected}")
                    elif r.json()["error"]["code"] not in ("unauthorized", "forbidden"):
                        wrong.append(f"{method} {path} as {label}: error shape {r.text}")
    assert wrong == []


def signed_in(client: httpx.Client, token: str) -> str:
    """Sign `client` in with `token` through the sign-in form; the CSRF value of its
    forms, read off a page as a browser would."""
    r = client.post("/sign-in", data={"token": token, "next": "/"})
    assert r.status_code == 303, r.text
    page = client.get("/").text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "a signed-in page carries the session's CSRF value"
    return found.group(1)


def test_every_page_form_for_every_role(tiny_hub: Hub) -> None:
    world = make_world(tiny_hub)
    tokens = {
        label: accounts.create_token(tiny_hub, owner(tiny_hub), name, scopes)["token"]
        for label, name, scopes in ACTORS
        if name is not None
    }
    wrong: list[str] = []
    with serve(tiny_hub) as server:
        clients = {label: httpx.Client(base_url=server, timeout=60) for label, *_ in ACTORS}
        csrf = {label: signed_in(clients[label], t) for label, t in tokens.items()}
        for (method, route), write in PAGES.items():
            path = write.path(world) if write.path else route
            for label, name, scopes in ACTORS:
                actor = _actor(tiny_hub, name, scopes)
                allowed = may(actor, write.action, write.model, write.owner)
                form = {**(write.body(world) if write.body else {}), "csrf": csrf.get(label, "")}
                r = clients[label].request(method, path, data=form)
                if allowed and r.status_code in (401, 403):
                    wrong.append(f"{method} {path} as {label}: refused {r.status_code}")
                if not allowed:
                    expected = 401 if name is None else 403
                    if r.status_code != expected:
                        wrong.append(f"{method} {path} as {label}: {r.status_code}, not {expected}")
                    elif "text/html" not in r.headers["content-type"]:
                        wrong.append(f"{method} {path} as {label}: not a page")
        for client in clients.values():
            client.close()
    assert wrong == []


# ---------------------------------------------------------------- the CLI

# Commands that change nothing, or that only the hub's own machine runs (as its owner,
# who can read the hub's files anyway: init, serving, workers, the demo in its own hub).
READS = {
    "models list", "models show", "reports list", "reports show", "suites list",
    "suites show", "leaderboard", "compare", "prs list", "prs show", "credits",
    "jobs list", "jobs show", "users list", "tokens list", "generate",
}  # fmt: skip
LOCAL = {"init", "up", "worker", "fsck", "demo"}


def _cli_dataset(tmp: Path) -> str:
    path = tmp / "data.jsonl"
    path.write_text(DATASET)
    return str(path)


COMMANDS: dict[str, Write] = {
    "models import": Write(
        "models.import", body=lambda w: ["models", "import", "{tiny}", "--name", "t2"]
    ),
    "models tag": Write("models.tag", body=lambda w: ["models", "tag", "tiny@latest", "t"]),
    "models untag": Write("models.tag", body=lambda w: ["models", "untag", "tiny", "t"]),
    "models export": Write(
        "models.export", body=lambda w: ["models", "export", "tiny", "--out", "{out}"]
    ),
    "reports file": Write(
        "reports.file",
        body=lambda w: [
            "reports",
            "file",
            "--model",
            "tiny",
            "--prompt",
            "yo?",
            "--expect",
            json.dumps(NEVER),
            "--no-reproduce",
        ],
    ),
    "reports confirm": Write(
        "reports.confirm", owner=REPORTER, body=lambda w: ["reports", "confirm", str(w.report)]
    ),
    "reports close": Write(
        "reports.close", owner=REPORTER, body=lambda w: ["reports", "close", str(w.report)]
    ),
    "reports reproduce": Write(
        "reports.reproduce", body=lambda w: ["reports", "reproduce", str(w.report)]
    ),
    "reports expect": Write(
        "reports.expect",
        owner=REPORTER,
        body=lambda w: ["reports", "expect", str(w.report), "--check", json.dumps(NEVER)],
    ),
    "feedback list": Write("feedback.read", body=lambda w: ["feedback", "list", "--model", "tiny"]),
    "feedback stats": Write(
        "feedback.read", body=lambda w: ["feedback", "stats", "--model", "tiny"]
    ),
    "feedback export": Write(
        "feedback.read",
        body=lambda w: ["feedback", "export", "--format", "chat", "--model", "tiny"],
    ),
    "reports rescore": Write(
        "reports.rescore", body=lambda w: ["reports", "rescore", str(w.report)]
    ),
    "suites build": Write(
        "suites.build", body=lambda w: ["suites", "build", "b", "--tag", "x", "--model", "tiny"]
    ),
    "suites import": Write(
        "suites.build", body=lambda w: ["suites", "import", "s", "--jsonl", "{cases}"]
    ),
    "suites export": Write(
        "suites.heldout",
        body=lambda w: [
            "suites",
            "export",
            "s",
            "--format",
            "jsonl",
            "--out",
            "{export}",
            "--include-heldout",
        ],
    ),
    "eval": Write("evals.run", body=lambda w: ["eval", "tiny", "--suite", "s"]),
    "contribute": Write(
        "contributions.open",
        body=lambda w: [
            "contribute",
            "--model",
            "tiny",
            "--dataset",
            "{data}",
            "--title",
            "f",
            "--no-check",
        ],
    ),
    "prs push": Write(
        "contributions.push",
        owner=CONTRIBUTOR,
        body=lambda w: ["prs", "push", str(w.contribution), "--dataset", "{data}", "--no-check"],
    ),
    "prs check": Write(
        "contributions.check",
        owner=CONTRIBUTOR,
        body=lambda w: ["prs", "check", str(w.contribution), "--no-check"],
    ),
    "prs approve": Write(
        "contributions.approve",
        owner=CONTRIBUTOR,
        body=lambda w: ["prs", "approve", str(w.contribution)],
    ),
    "prs reject": Write(
        "contributions.reject",
        owner=CONTRIBUTOR,
        body=lambda w: ["prs", "reject", str(w.contribution), "--reason", "no"],
    ),
    "prs close": Write(
        "contributions.close",
        owner=CONTRIBUTOR,
        body=lambda w: ["prs", "close", str(w.contribution)],
    ),
    "release": Write(
        "releases.cut", body=lambda w: ["release", "tiny", "--from", str(w.contribution)]
    ),
    "jobs cancel": Write(
        "jobs.cancel",
        owner=CONTRIBUTOR,
        model=None,
        body=lambda w: ["jobs", "cancel", str(w.job)],
    ),
    "users add": Write(
        "users.manage", body=lambda w: ["users", "add", "neo", "--role", "reporter"]
    ),
    "users set-role": Write(
        "users.manage", body=lambda w: ["users", "set-role", "rita", "--role", "reporter"]
    ),
    "tokens create": Write(
        "tokens.manage", owner=REPORTER, body=lambda w: ["tokens", "create", "--user", REPORTER]
    ),
    "tokens revoke": Write(
        "tokens.manage", owner=REPORTER, body=lambda w: ["tokens", "revoke", str(w.victim_token)]
    ),
}


def test_every_write_command_for_every_role(
    tiny_hub: Hub, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from upstream.cli import app

    world = make_world(tiny_hub)
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"prompt": "yo", "expected": NEVER}) + "\n")
    fill = {"tiny": str(tiny_model_dir), "out": str(tmp_path / "out"),
            "export": str(tmp_path / "export"), "data": _cli_dataset(tmp_path),
            "cases": str(cases)}  # fmt: skip
    monkeypatch.setenv("UPSTREAM_HOME", str(tiny_hub.settings.home))
    monkeypatch.setenv("UPSTREAM_HAND_OVER_JOBS", "false")
    runner = CliRunner()
    wrong: list[str] = []
    for command, write in COMMANDS.items():
        assert write.body is not None
        args = [
            fill.get(a.strip("{}"), a) if a.startswith("{") and a.endswith("}") else a
            for a in write.body(world)
        ]
        for label, name, scopes in ACTORS:
            if name is None or scopes is not None:
                continue  # the CLI has no anonymous user and no tokens
            actor = accounts.actor_named(tiny_hub, name)
            allowed = may(actor, write.action, write.model, write.owner)
            result = runner.invoke(app, [*args, "--as", name], env=dict(os.environ))
            refused = isinstance(result.exception, (Forbidden, Unauthorized))
            if allowed and refused:
                wrong.append(f"{command} as {label}: refused: {result.exception}")
            if not allowed and not refused:
                wrong.append(f"{command} as {label}: not refused ({result.exception!r})")
    assert wrong == []
