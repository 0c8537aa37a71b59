"""`schemathesis` against the OpenAPI document of a live `upstream up` (real HTTP, the tiny
model): generated and mutated requests, with the links between operations (inferred from
the typed answers: 14 of 39 covered at this seed and budget), find no 5xx
and no response outside its documented status codes, content type and schema.

Bounded for CI: a fixed seed, a few examples per operation, a time budget. The run acts
as the hub's owner (an admin token) so that writes reach the domain; token revocation is
left out (it would revoke the run's own token halfway).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.people import owner, person
from tests.server.conftest import upstream_up
from upstream import accounts, suites
from upstream import contributions as prs
from upstream.hub import Hub
from upstream.registry import import_model
from upstream.reports import parse_report, submit_one

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}
DATASET = (
    b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
)
BUDGET_S = 60


def _prepared(home: Path, model_dir: Path) -> str:
    """A hub with something of every kind to find; returns an owner token."""
    hub = Hub.open(home)
    try:
        import_model(hub, str(model_dir), "tiny")
        boss = owner(hub)
        ana = person(hub, "ana", "reporter")
        report = parse_report({"model": "tiny", "prompt": "hi?", "expected": NEVER})
        submit_one(hub, report, ana, "cli")
        cases = [suites.CaseIn([{"role": "user", "content": "hi"}], NEVER, [])]
        suites.import_cases(hub, boss, "s", cases, model="tiny")
        data = prs.ContributionIn("tiny", "a fix", prs.Content(dataset=DATASET))
        prs.open_contribution(hub, data, person(hub, "bo", "contributor"))
        return str(accounts.create_token(hub, boss, boss.name)["token"])
    finally:
        hub.close()


def test_the_live_api_answers_generated_requests_without_5xx_or_schema_breaks(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    home = tmp_path / "home"
    token = _prepared(home, tiny_model_dir)
    log = tmp_path / "up.log"
    # the run writes thousands of times a minute: upstream_up turns the write limit off
    with upstream_up(home, log, "--no-worker") as base:
        run = subprocess.run(
            [
                str(Path(sys.executable).with_name("schemathesis")),
                "run",
                f"{base}/openapi.json",
                "--header",
                f"Authorization: Bearer {token}",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance",
                "--phases",
                "coverage,fuzzing,stateful",
                "--max-examples",
                "5",
                "--max-time",
                str(BUDGET_S),
                "--seed",
                os.environ.get("UPSTREAM_SCHEMATHESIS_SEED", "20261204"),
                "--workers",
                "1",
                "--exclude-path-regex",
                "^/api/tokens/",
                "--generation-with-security-parameters",
                "false",
                "--request-timeout",
                "30",
            ],
            cwd=tmp_path,  # its example database stays out of the repository
            capture_output=True,
            text=True,
            timeout=BUDGET_S + 240,
        )
        served = log.read_text()
        first = served.find(" 500 ")
        # the failing request's line and its whole traceback, not the log's tail
        assert first < 0, served[served.rfind("\n", 0, first) + 1 :][:8000]
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert "passed" in run.stdout
        # typed answers let schemathesis chain operations: ids from one answer feed the next
        links = re.search(r"API Links:\s+(\d+) covered", run.stdout)
        assert links and int(links.group(1)) >= 5, run.stdout[-3000:]
        # the run's own token still works: it revoked nothing it needed
        me = httpx.get(f"{base}/api/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["role"] == "admin"
