"""The CI check of a dataset contribution on the bundled model, timed: training and each
suite's comparison.

    python -m benchmarks.ci_check [--home DIR] [--checks N]

In a fresh hub, the steps of `upstream demo` up to its check: import SmolLM2-135M-Instruct
(with its guard suite), file the one-word failures and reproduce them, confirm them and
build a suite, then open the 25-example dataset contribution and run its check job (the
LoRA is trained with the default recipe, then base and candidate are compared on every
suite). Prints the check's wall time, its training and the rest, and per evaluation run
of the check: cases, tokens generated and answers stopped at their verdict. Then (by
default) a second contribution is opened and checked the same way, with one example fewer
(another adapter, so the candidate's outputs are new): what a later check of a
contribution to that revision costs, with the base's outputs (its evaluation runs and,
since 2026-12-07, its replayed answers) already in the hub's output cache.

To measure an older commit the same way, put its source first on the path:
`git worktree add /tmp/old COMMIT && PYTHONPATH=/tmp/old/src python benchmarks/ci_check.py`.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

import upstream
from upstream import accounts, contributions, reports, suites
from upstream.db.schema import EvalRun, Suite, SuiteVersion
from upstream.demo import CONTRIBUTOR, DATA, MODEL, REPORTER
from upstream.hub import Hub
from upstream.reproduction import reproduce
from upstream.triage import confirm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help="a fresh directory (default: a temp one)")
    parser.add_argument(
        "--checks",
        type=int,
        default=2,
        help="checks to run one after the other, each of a new contribution of the same data "
        "(the first in the fresh hub; later ones find the base's outputs cached)",
    )
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="upstream-ci-bench-"))
    hub = Hub.open(home)
    owner = accounts.owner(hub)
    hub.jobs.run_foreground("models.import", {"source": f"bundled:{MODEL}", "name": MODEL})
    accounts.add_user(hub, owner, REPORTER, "reporter")
    accounts.add_user(hub, owner, CONTRIBUTOR, "contributor")
    ana = accounts.authenticate(hub, accounts.create_token(hub, owner, REPORTER)["token"])
    bo = accounts.authenticate(hub, accounts.create_token(hub, owner, CONTRIBUTOR)["token"])
    good, _ = reports.parse_jsonl((DATA / "one_word_failures.jsonl").read_bytes(), MODEL)
    ids = [f.id for f in reports.submit(hub, good, ana, "cli").filed]
    reproduce(hub, ids)
    for i in ids:
        confirm(hub, i, owner)
    suites.build_from_reports(hub, owner, "one-word", "one-word", MODEL)
    lines = (DATA / "one_word_answers.jsonl").read_bytes().splitlines(keepends=True)
    checks = []
    for n in range(args.checks):
        # a later contribution is another fix: one example fewer each time, so its adapter
        # (and its outputs) differ while its replayed prompts are the first one's, fewer
        title = "Answer one-word questions in one word" + (f" (again, {n + 1})" if n else "")
        checks.append(check_once(hub, title, b"".join(lines[: len(lines) - n]), ids, bo, owner))
    commit = subprocess.run(
        ["git", "-C", str(Path(upstream.__file__).parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    for n, (wall, detail, rows) in enumerate(checks):
        report(n, wall, detail, rows, commit)
    if args.home is None:
        hub.close()
        shutil.rmtree(home, ignore_errors=True)


def check_once(
    hub: Hub, title: str, dataset: bytes, ids: list[int], bo: Any, owner: Any
) -> tuple[float, dict[str, Any], list[tuple[str, int, int, str, str]]]:
    """Open the demo's dataset contribution and run its check job: (wall s, detail, runs)."""
    data = contributions.ContributionIn(
        MODEL,
        title,
        contributions.Content(dataset=dataset),
        ids,
    )
    with hub.session() as s:
        runs_before = s.scalar(select(EvalRun.id).order_by(EvalRun.id.desc())) or 0
    opened = contributions.open_contribution(hub, data, bo, attempts=1)
    started = time.perf_counter()
    hub.jobs.run_now(opened["job"])
    wall = time.perf_counter() - started
    with hub.session() as s:
        detail = contributions.contribution_detail(
            contributions.get_contribution(s, opened["id"]), owner
        )
        runs = list(s.scalars(select(EvalRun).where(EvalRun.id > runs_before)))
        query = select(SuiteVersion.id, Suite.name).join(Suite, Suite.id == SuiteVersion.suite_id)
        names = {version_id: name for version_id, name in s.execute(query)}
        rows = []
        for r in runs:
            outs = (r.metrics or {}).get("outputs")
            n = (r.metrics or {}).get("all", {}).get("n", 0)
            rows.append(
                (
                    f"{names.get(r.suite_version_id, '?')}, run {r.id}",
                    n,
                    r.generated,
                    "-" if outs is None else str(outs["tokens"]),
                    "-" if outs is None else str(outs["stopped_at_verdict"]),
                )
            )
    return wall, detail, rows


def report(
    n: int,
    wall: float,
    detail: dict[str, Any],
    rows: list[tuple[str, int, int, str, str]],
    commit: str,
) -> None:
    training = detail["training"]["seconds"]
    which = "in a fresh hub" if n == 0 else f"number {n + 1}, same revision and suites"
    print(
        f"\nCI check {which}: the demo's dataset contribution "
        f"({detail['training']['examples']} examples with replay), Upstream at "
        f"{commit or '?'} from {upstream.__file__}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs; verdict {detail['state']}\n"
    )
    print(f"{'check job, wall s':<34}{wall:>8.1f}")
    print(f"{'  training (LoRA + replay), s':<34}{training:>8.1f}")
    print(f"{'  the rest (comparisons), s':<34}{wall - training:>8.1f}")
    print(f"\n{'evaluation run':<38}{'cases':>7}{'generated':>11}{'tokens':>9}{'stopped':>9}")
    for name, cases, generated, tokens, stopped in rows:
        print(f"{name:<38}{cases:>7}{generated:>11}{tokens:>9}{stopped:>9}")
    print(f"\n{'suite':<30}{'kind':<10}{'cases':>6}{'fixed':>7}{'broken':>8}{'lost':>6}")
    for r in detail["checks"]["suites"]:
        d = r["splits"]["all"]
        print(
            f"{r['suite']:<30}{r['kind']:<10}{d['n']:>6}{d['fixed_count']:>7}"
            f"{d['broken_count']:>8}{d['knowledge']['lost_count']:>6}"
        )
    for reason in detail["checks"]["reasons"]:
        print(f"  {reason}")
    print(f"training precision: {detail['training'].get('precision', 'float32')}")


if __name__ == "__main__":
    main()
