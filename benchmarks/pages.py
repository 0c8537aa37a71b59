"""Every page of the web hub, timed on a hub with 10,000 reports.

    python -m benchmarks.pages [--home DIR] [--reports 10000] [--rounds 30]

The hub holds the bundled model, 10,000 reports (mixed statuses, tags, reporters, every
fifth linked as a likely duplicate of an earlier one, each with its reproduction output),
a suite built from 200 of them with a real evaluation run on its cases, contributions
and a release row. The reports are written straight into the database (filing 10,000
through the API is `benchmarks/reports.py`'s subject, not this one's). Then `upstream up
--no-worker` runs in its own process (with its worker, the 30 contributions' queued checks
would be training LoRAs on the same two cores meanwhile, and the figures would be those of
a busy CPU; measured once that way: the dashboard's p50 went from ~30 to ~200 ms), and
each page is fetched `--rounds` times over HTTP, after three warm-ups, signed in as a
maintainer (who sees the most: every form) and anonymous (whose view filters out what is
hidden from them).
Prints p50, p95 and the slowest answer per page against the 200 ms goal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert, select

from benchmarks.reports import SUBJECTS, TEMPLATES, free_port, serve
from upstream import accounts, evals, suites
from upstream import contributions as prs
from upstream.db.schema import (
    Release,
    Report,
    ReportEvent,
    ReportFiling,
    ReportVariant,
    utcnow,
)
from upstream.hub import Hub
from upstream.registry import import_model, resolve

MODEL = "smollm2-135m-instruct"
GOAL_MS = 200.0
STATUSES = ["new", "reproduced", "reproduced", "confirmed", "not_reproduced", "fixed", "wontfix"]
TAGS = ["format", "one-word", "number", "refusal", "facts", "safety", "length"]
PEOPLE = [f"user{i:03d}" for i in range(300)]
DATASET = "\n".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for q, a in [("Capital of France? One word.", "Paris"), ("2+2? A number.", "4")]
)


def fill(hub: Hub, n: int) -> None:
    """`n` reports written in bulk, as filings and reproductions would have left them."""
    rng = random.Random(0)
    with hub.session() as s:
        revision = resolve(s, MODEL)
        model_id, revision_id = revision.model_id, revision.id
    start = utcnow() - timedelta(days=30)
    rows, variants, filings, events = [], [], [], []
    for i in range(1, n + 1):
        subject = SUBJECTS[i % len(SUBJECTS)]
        prompt = TEMPLATES[i % len(TEMPLATES)].format(s=subject) + f" (#{i})"
        status = rng.choice(STATUSES)
        at = start + timedelta(seconds=i * 200)
        rows.append(
            {
                "id": i,
                "model_id": model_id,
                "revision_id": revision_id,
                "messages": [{"role": "user", "content": prompt}],
                "settings": {"max_new_tokens": 64},
                "expected": {"type": "max_words", "value": 3},
                "tags": sorted(rng.sample(TAGS, 2)),
                "severity": rng.choice(["low", "medium", "high"]),
                "reporter": rng.choice(PEOPLE),
                "status": status,
                "reproduction_rate": 1.0 if status != "not_reproduced" else 0.0,
                "content_hash": hashlib.sha256(prompt.encode()).hexdigest(),
                "similar_to_id": rng.randrange(1, i) if i > 5 and i % 5 == 0 else None,
                "similar_distance": 0.1 if i > 5 and i % 5 == 0 else None,
                "created_at": at,
                "updated_at": at,
            }
        )
        variants.append(
            {
                "report_id": i,
                "position": 0,
                "messages": rows[-1]["messages"],
                "output": f"The answer about {subject} takes more words than asked for.",
                "passed": False,
                "score": 0.0,
                "explanation": "10 words, more than 3",
            }
        )
        filings.append({"report_id": i, "reporter": rows[-1]["reporter"], "source": "api"})
        events.append({"report_id": i, "actor": rows[-1]["reporter"], "kind": "filed"})
    with hub.session() as s, s.begin():
        for table, data in [
            (Report, rows),
            (ReportVariant, variants),
            (ReportFiling, filings),
            (ReportEvent, events),
        ]:
            for at in range(0, len(data), 2000):
                s.execute(insert(table), data[at : at + 2000])


def build(home: Path, n: int) -> str:
    """The hub, filled; a maintainer's token."""
    hub = Hub.open(home)
    boss = accounts.owner(hub)
    import_model(hub, f"bundled:{MODEL}", MODEL)
    fill(hub, n)
    with hub.session() as s, s.begin():  # 200 confirmed reports tagged for the suite
        for r in s.scalars(select(Report).where(Report.id <= 200)):
            r.status, r.tags = "confirmed", sorted({*r.tags, "bench"})
    suites.build_from_reports(hub, boss, "bench", "bench", MODEL, 20)
    evals.run_eval(hub, MODEL, "bench", max_new_tokens=8)
    accounts.add_user(hub, boss, "bo", "contributor")
    bo = accounts.actor_named(hub, "bo")
    for k in range(30):
        data = prs.ContributionIn(
            MODEL, f"fix {k}", prs.Content(dataset=DATASET.encode()), fixes=[k + 1]
        )
        prs.open_contribution(hub, data, bo)
    with hub.session() as s, s.begin():
        base = resolve(s, MODEL)
        s.add(
            Release(
                model_id=base.model_id,
                base_revision_id=base.id,
                method="linear",
                contributions=[1],
                state="failed",
                author=boss.name,
            )
        )
    accounts.add_user(hub, boss, "mia", "maintainer")
    secret = str(accounts.create_token(hub, boss, "mia")["token"])
    hub.close()
    return secret


def pages(n: int) -> list[str]:
    return [
        "/",
        "/models",
        f"/models/{MODEL}",
        "/reports",
        f"/reports?page={n // 50}",
        "/reports?status=confirmed&tag=format",
        "/reports?q=Ghana",
        "/reports?reporter=user007",
        "/reports?cluster=5",
        f"/reports/{n // 2}",
        "/reports/new",
        "/suites",
        "/suites/bench",
        "/evals",
        "/evals/1",
        "/contributions",
        "/contributions/1",
        "/releases",
        "/releases/1",
        "/leaderboard",
        "/feedback",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--reports", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="upstream-pages-")) / "home"
    t0 = time.perf_counter()
    secret = build(home, args.reports)
    print(f"hub with {args.reports} reports built in {time.perf_counter() - t0:.0f} s: {home}")
    port = free_port()
    server = serve(home, port)  # `upstream up --no-worker`, once it answers
    base = f"http://127.0.0.1:{port}"
    try:
        rows = []
        with (
            httpx.Client(base_url=base, timeout=60) as maintainer,
            httpx.Client(base_url=base, timeout=60) as anonymous,
        ):
            signed = maintainer.post("/sign-in", data={"token": secret})
            assert signed.status_code == 303, signed.text
            for who, client in [("maintainer", maintainer), ("anonymous", anonymous)]:
                for page in pages(args.reports):
                    for _ in range(3):
                        assert client.get(page).status_code == 200, page
                    times = []
                    for _ in range(args.rounds):
                        t = time.perf_counter()
                        r = client.get(page)
                        times.append((time.perf_counter() - t) * 1000)
                        assert r.status_code == 200, page
                    times.sort()
                    p95 = times[min(len(times) - 1, round(0.95 * len(times)) - 1)]
                    rows.append(
                        (who, page, statistics.median(times), p95, times[-1], len(r.content))
                    )
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"\npages of a hub with {args.reports} reports, as a maintainer and anonymous, "
        f"{args.rounds} rounds each ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs)\n"
    )
    print(f"| viewer | page | p50 ms | p95 ms | slowest ms | KiB | p95 under {GOAL_MS:.0f} ms |")
    print("|---|---|---:|---:|---:|---:|---|")
    for who, page, p50, p95, worst, size in rows:
        ok = "yes" if p95 < GOAL_MS else "**no**"
        print(
            f"| {who} | `{page}` | {p50:.1f} | {p95:.1f} | {worst:.1f} | {size / 1024:.1f} | {ok} |"
        )
    slowest = max(r[3] for r in rows)
    print(f"\nslowest p95: {slowest:.1f} ms (goal: every page under {GOAL_MS:.0f})")


if __name__ == "__main__":
    main()
