"""Held-out cases stay hidden on every GET route for anyone but a maintainer (issue 12).

A hub gets a suite whose cases carry marker strings in their prompts and checks, a
claimed report, a contribution the CI checks against them, an evaluation and a release.
Then every GET route of the app, enumerated from `app.routes` so that a new route is
covered without editing this file, is requested over HTTP by an anonymous viewer, by
the contribution's author and by the report's reporter, each signed in with a bearer
token. No body may hold a held-out case's prompt, check, id or generated output. A
maintainer sees those markers on the suite, so they are real.

Who may see held-out cases is a maintainer of the suite's model (`access.RULES`:
`suites.heldout`): MAINTAINER holds that role on `tiny` only, and acts through a token
like everyone else.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from fastapi import routing as fastapi_routing
from sqlalchemy import select

from tests.people import bearer, person
from tests.server.conftest import wait_job
from tests.test_contributions import make_adapter
from upstream import releases, suites
from upstream.db.schema import (
    Case,
    Contribution,
    EvalOutput,
    EvalRun,
    Job,
    Model,
    Release,
    Report,
    Revision,
    Suite,
)
from upstream.hub import Hub
from upstream.registry import materialize, resolve
from upstream.server.app import create_app
from upstream.serving import served_models

MAINTAINER = "maya"  # a maintainer of `tiny` (not of the hub)
AUTHOR = "bo"  # a contributor: opens the contribution
REPORTER = "ana"  # a reporter: files the report it claims to fix
SUITE = "secrets"
TOKENS = 12  # generated per case by the CI and the evaluation: enough to differ, and fast
MIN_OUTPUT_CHARS = 12  # a generated output shorter than this is no distinctive marker

# Query strings that change what a route shows, each requested besides the plain route.
QUERIES: dict[str, list[dict[str, Any]]] = {
    "/api/reports": [{"clusters": True}],
    "/api/leaderboard": [{"suite": SUITE}],
    "/api/contributions": [{"model": "tiny"}],
    "/api/releases": [{"model": "tiny"}],
    "/api/credits": [{"model": "tiny"}],
    # the pages: the tracker's filters, and a cluster
    "/reports": [{"model": "tiny"}, {"q": "mkprompt"}],
    "/feedback": [{"model": "tiny"}],
}

# GET routes some viewers may not read at all (they show accounts, never cases), and the
# refusal each of those viewers gets; every other GET answers 200. Refusals are searched
# for held-out cases too.
REFUSED: dict[tuple[str, str], int] = {
    ("/api/users", "anonymous"): 401,
    ("/api/users", "author"): 403,
    ("/api/users", "reporter"): 403,
    ("/api/tokens", "anonymous"): 401,
    # the held-out download of a suite's cases (the public one answers everyone)
    (f"/suites/{SUITE}/cases.jsonl?heldout=true", "anonymous"): 401,
    (f"/suites/{SUITE}/cases.jsonl?heldout=true", "author"): 403,
    (f"/suites/{SUITE}/cases.jsonl?heldout=true", "reporter"): 403,
}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with short CI outputs (its accounts are made once `tiny` is imported)."""
    h = Hub.open(tmp_path / "home", check_max_new_tokens=TOKENS)
    yield h
    h.close()


def _marked_case(i: int) -> suites.CaseIn:
    """A case with its own prompt and check marker; pass = few enough words.

    The word limits vary so that a changed model fixes some cases and breaks others: the
    CI's report then names changed cases in both splits.
    """
    prompt = f"Tell a tale of the sea, mkprompt{i:02d}zq."
    expected = {
        "type": "all_of",
        "checks": [
            {"type": "min_words", "value": 4 + i % 3},
            {"type": "not_contains", "values": [f"mkexpect{i:02d}zq"]},
        ],
    }
    return suites.CaseIn([{"role": "user", "content": prompt}], expected, ["sea"])


def _is_heldout(c: suites.CaseIn, secret: str) -> bool:
    key = suites.split_key(None, suites.input_hash(c.messages))
    return suites.split_of(key, 50, secret) == "heldout"


def _marked_cases(secret: str) -> list[suites.CaseIn]:
    """Twelve marked cases, held-out and public by turns under the hub's split secret.

    The secret is random per hub, so the cases are picked from a longer run rather than
    taken as the first twelve (which could fall nearly all on one side).
    """
    sides: dict[bool, list[suites.CaseIn]] = {True: [], False: []}
    for i in range(100):
        c = _marked_case(i)
        sides[_is_heldout(c, secret)].append(c)
    assert len(sides[True]) >= 6 and len(sides[False]) >= 6
    return [c for pair in zip(sides[True][:6], sides[False][:6], strict=True) for c in pair]


def _markers(c: suites.CaseIn) -> dict[str, str]:
    """What of a case must not be seen: its prompt, its check's marker, and its id."""
    prompt = c.messages[0]["content"]
    [mark] = re.findall(r"mkprompt\d+zq", prompt)
    return {
        "prompt": prompt,
        "prompt marker": mark,
        "expected": c.expected["checks"][1]["values"][0],
        "case id": suites.case_id(c.messages, c.expected),
    }


def _adapter_body(hub: Hub, out: Path) -> dict[str, Any]:
    with hub.session() as s:
        adapter = make_adapter(materialize(hub, resolve(s, "tiny")), out)
    return {
        "config": json.loads((adapter / "adapter_config.json").read_text()),
        "safetensors_base64": base64.b64encode(
            (adapter / "adapter_model.safetensors").read_bytes()
        ).decode(),
    }


def _texts(response: httpx.Response) -> list[str]:
    """The body as text, and each string in it once decoded (JSON escapes, HTML entities)."""
    texts = [response.text]
    if response.headers.get("content-type", "").startswith("application/json"):
        stack = [response.json()]
        while stack:
            value = stack.pop()
            if isinstance(value, dict):
                texts.extend(str(k) for k in value)
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
            elif isinstance(value, str):
                texts.append(value)
    else:
        texts.append(html.unescape(response.text))
    return texts


def _get_routes(app: FastAPI) -> list[str]:
    """The path of every GET route of the app, included routers flattened."""
    # FastAPI ≥ 0.165 keeps included routers nested in `app.routes`; older ones flatten.
    flatten = getattr(fastapi_routing, "iter_route_contexts", None)
    routes = list(flatten(app.routes)) if flatten else list(app.routes)
    paths = []
    for route in routes:
        if getattr(route, "path", None) == "/static":  # the pages' stylesheet and script
            continue
        path, methods = getattr(route, "path_format", None), getattr(route, "methods", None)
        assert path and methods is not None, (
            f"route {route!r} is no plain HTTP route (a mount?); say here how to search it "
            "for held-out cases"
        )
        if "GET" in methods:
            paths.append(path)
    return paths


def _fills(hub: Hub) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Route path → (path parameters, query) for every object in the hub it can show.

    A route with path parameters that is not here fails the test: whoever adds one says
    here which objects it shows, so that the new route is searched too.
    """
    with hub.session() as s:
        revisions = s.execute(select(Model.name, Revision.hash).join(Revision.model)).all()
        all_suites = list(s.scalars(select(Suite)))
        return {
            "/api/models/{name}": [({"name": n}, {}) for n in s.scalars(select(Model.name))],
            "/api/models/{name}/revisions/{rev}": [
                ({"name": n, "rev": h}, {}) for n, h in revisions
            ],
            "/api/jobs/{job_id}": [({"job_id": i}, {}) for i in s.scalars(select(Job.id))],
            "/api/reports/{report_id}": [
                ({"report_id": i}, {}) for i in s.scalars(select(Report.id))
            ],
            # every suite (claims and guard suites too), at its newest and each older version
            "/api/suites/{name}": [({"name": st.name}, {}) for st in all_suites]
            + [
                ({"name": st.name}, {"version": v.number}) for st in all_suites for v in st.versions
            ],
            "/api/contributions/{contribution_id}": [
                ({"contribution_id": i}, {}) for i in s.scalars(select(Contribution.id))
            ],
            "/api/releases/{release_id}": [
                ({"release_id": i}, {}) for i in s.scalars(select(Release.id))
            ],
            "/v1/models/{model_id}": [({"model_id": m["id"]}, {}) for m in served_models(hub)],
            # the pages, over the same objects (a suite's download with and without the
            # held-out cases; a comparison is a job)
            "/models/{name}": [({"name": n}, {}) for n in s.scalars(select(Model.name))],
            "/jobs/{job_id}": [({"job_id": i}, {}) for i in s.scalars(select(Job.id))],
            "/reports/{report_id}": [({"report_id": i}, {}) for i in s.scalars(select(Report.id))],
            "/suites/{name}": [({"name": st.name}, {}) for st in all_suites]
            + [
                ({"name": st.name}, {"version": v.number}) for st in all_suites for v in st.versions
            ],
            "/suites/{name}/cases.jsonl": [({"name": st.name}, {}) for st in all_suites]
            + [({"name": SUITE}, {"heldout": "true"})],
            "/evals/{run_id}": [({"run_id": i}, {}) for i in s.scalars(select(EvalRun.id))],
            "/compare/{job_id}": [
                ({"job_id": i}, {})
                for i in s.scalars(select(Job.id).where(Job.kind == "evals.compare"))
            ],
            "/contributions/{contribution_id}": [
                ({"contribution_id": i}, {}) for i in s.scalars(select(Contribution.id))
            ],
            "/releases/{release_id}": [
                ({"release_id": i}, {}) for i in s.scalars(select(Release.id))
            ],
        }


def _urls(paths: list[str], hub: Hub) -> list[tuple[str, dict[str, Any]]]:
    """(url, query) for every GET route, parameters filled with every object in the hub."""
    fills = _fills(hub)
    urls: list[tuple[str, dict[str, Any]]] = []
    for path in paths:
        if "{" not in path:
            urls += [(path, {}), *((path, q) for q in QUERIES.get(path, []))]
            continue
        if path not in fills:
            pytest.fail(
                f"GET {path} has path parameters this test cannot fill; add the objects it "
                "shows to `_fills` in tests/server/test_heldout_api.py"
            )
        assert fills[path], f"the hub has no object to fill GET {path} with"
        urls += [(path.format(**params), query) for params, query in fills[path]]
    return urls


def test_heldout_cases_are_hidden_on_every_get_route(
    server: str, tiny_hub: Hub, tmp_path: Path
) -> None:
    maintainer = bearer(tiny_hub, MAINTAINER, "maintainer", model="tiny")
    author = bearer(tiny_hub, AUTHOR, "contributor")
    viewers = {
        "anonymous": {},
        "author": author,
        "reporter": bearer(tiny_hub, REPORTER, "reporter"),
    }
    with tiny_hub.session() as s:
        secret = suites.split_secret(s)
    cases = _marked_cases(secret)
    heldout = [c for c in cases if _is_heldout(c, secret)]
    public = [c for c in cases if not _is_heldout(c, secret)]
    suites.add_cases(tiny_hub, SUITE, cases[:8], "tiny", heldout_percent=50, note="first")
    suites.add_cases(tiny_hub, SUITE, cases[8:], "tiny", note="more")

    # a report the contribution claims to fix (its claims suite holds nothing out)
    r = httpx.post(
        f"{server}/api/reports",
        json={
            "model": "tiny",
            "prompt": "Name a colour.",
            "expected": {"type": "max_words", "value": 2},
            "max_new_tokens": 5,
        },
        headers=viewers["reporter"],
        timeout=120,  # the first report loads the embedding model
    )
    assert r.status_code == 201, r.text
    report = r.json()
    assert wait_job(server, report["reproduction_job"])["state"] == "done"

    body = {
        "model": "tiny",
        "title": "shorter answers",
        "adapter": _adapter_body(tiny_hub, tmp_path / "adapter"),
        "fixes": [report["id"]],
    }
    r = httpx.post(f"{server}/api/contributions", json=body, headers=author, timeout=60)
    assert r.status_code == 201, r.text
    opened = r.json()
    job = wait_job(server, opened["job"], timeout=600)
    assert job["state"] == "done", job["error"]
    state = httpx.get(f"{server}/api/contributions/{opened['id']}").json()["state"]
    approved = httpx.post(
        f"{server}/api/contributions/{opened['id']}/approve",
        json={"override": "a test" if state == "failed" else ""},
        headers=maintainer,
    )
    assert approved.status_code == 200, approved.text
    planned = releases.plan_release(
        tiny_hub, releases.ReleaseIn("tiny", [opened["id"]]), person(tiny_hub, MAINTAINER)
    )
    job = wait_job(server, releases.queue_release(tiny_hub, planned["id"]), timeout=600)
    assert job["state"] == "done", job["error"]
    for split in ("heldout", "all"):
        r = httpx.post(
            f"{server}/api/evals",
            json={"model": "tiny", "suite": SUITE, "split": split, "max_new_tokens": TOKENS},
            headers=author,
        )
        assert r.status_code == 202, r.text
        assert wait_job(server, r.json()["job"])["state"] == "done"
    # a comparison of the release with its base (its page shows changed cases side by side)
    with tiny_hub.session() as s:
        first = s.scalars(select(Revision.hash).order_by(Revision.id)).first()
    r = httpx.post(
        f"{server}/api/comparisons",
        json={
            "base": f"tiny@{first}",
            "candidate": "tiny@latest",
            "suite": SUITE,
            "max_new_tokens": TOKENS,
        },
        headers=author,
    )
    assert r.status_code == 202, r.text
    assert wait_job(server, r.json()["job"], timeout=300)["state"] == "done"

    secrets = {(kind, text) for c in heldout for kind, text in _markers(c).items()}
    hidden_inputs = {suites.input_hash(c.messages) for c in heldout}
    hidden_ids = {suites.case_id(c.messages, c.expected) for c in heldout}
    with tiny_hub.session() as s:
        outputs = list(s.scalars(select(EvalOutput)))
        others = s.scalars(select(Case).where(Case.id.not_in(hidden_ids)))
        # an output that is also part of something public is no evidence of a leak
        seen_elsewhere = [json.dumps([c.messages, c.expected], ensure_ascii=False) for c in others]
    seen_elsewhere += [o.output for o in outputs if o.input_hash not in hidden_inputs]
    generated = {
        o.output.strip()
        for o in outputs
        if o.input_hash in hidden_inputs
        and len(o.output.strip()) >= MIN_OUTPUT_CHARS
        and not any(o.output.strip() in t for t in seen_elsewhere)
    }
    assert generated, "the held-out cases gave no distinctive output to look for"
    secrets |= {("generated output", text) for text in generated}

    # Not vacuous: a maintainer sees every held-out marker on the suite, and the CI's
    # stored report names held-out cases, which the contribution route must hide.
    full = httpx.get(f"{server}/api/suites/{SUITE}", headers=maintainer)
    missing = [s for s in secrets if s[0] != "generated output" and s[1] not in full.text]
    assert not missing, f"a maintainer should see these on the suite: {missing}"
    seen = httpx.get(f"{server}/api/contributions/{opened['id']}", headers=maintainer).json()
    named = {i for r in seen["checks"]["suites"] for i in r["heldout_ids"]}
    assert named & hidden_ids, "the CI named no held-out case; the contribution check is moot"
    anyone = httpx.get(f"{server}/api/suites/{SUITE}").text
    assert all(_markers(c)["prompt"] in anyone for c in public)

    paths = _get_routes(create_app(tiny_hub))
    for path in ("/api/suites/{name}", "/api/contributions/{contribution_id}", "/api/jobs"):
        assert path in paths  # the enumeration sees the included routers
    leaks = []
    requested = 0
    for url, query in _urls(paths, tiny_hub):
        for viewer, headers in viewers.items():
            r = httpx.get(f"{server}{url}", params=query, headers=headers, timeout=60)
            shown = url + (f"?{urlencode(query)}" if query else "")
            expected = REFUSED.get((shown, viewer), REFUSED.get((url, viewer), 200))
            assert r.status_code == expected, (
                f"GET {url} {query} as {viewer}: {r.status_code} {r.text}"
            )
            requested += 1
            texts = _texts(r)
            leaks += [
                f"GET {url} {query} as {viewer}: {kind} {text!r}"
                for kind, text in sorted(secrets)
                if any(text in t for t in texts)
            ]
    assert requested >= len(viewers) * len(paths)
    assert not leaks, "held-out cases shown to a viewer who may not see them:\n" + "\n".join(leaks)
