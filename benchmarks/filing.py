"""Reports filed through the API by concurrent clients, each with its own token.

    python -m benchmarks.filing [--home DIR] [--existing 10000] [--n 1600] [--clients 1,8]

The hub already holds `--existing` reports (filed once, in one batch, and kept in
`--home` for the next run). `upstream up --no-worker` serves; every client is a thread
with its own account and bearer token, filing distinct reports one POST at a time with
duplicate detection on (content hash and embedding nearest neighbour); the reproduction
jobs are queued, not run. Prints reports/s and p50/p99 latency per number of clients, and
where one filing's time goes, measured in-process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from benchmarks.prompts import COUNTRIES, NOUNS, TOPICS, WORDS
from benchmarks.reports import serve
from upstream import accounts
from upstream.access import Actor
from upstream.hub import Hub
from upstream.registry import import_model
from upstream.reports import ReportQuery, list_reports, parse_report, prepare, submit

MODEL = "smollm2-135m-instruct"
TEMPLATES = [
    "What is the capital of {a}? Answer with one word.",
    "Write one sentence about {b} and {c}.",
    "Is a {d} {e}? Answer yes or no.",
    "Give the plural of {d} in one word.",
    "How many letters are in the word {d}? Give a number.",
]


def report(i: int, salt: str) -> dict[str, object]:
    t = TEMPLATES[i % len(TEMPLATES)]
    prompt = t.format(
        a=COUNTRIES[i % len(COUNTRIES)],
        b=TOPICS[i % len(TOPICS)],
        c=TOPICS[(i // 7) % len(TOPICS)],
        d=NOUNS[i % len(NOUNS)],
        e=WORDS[(i // 3) % len(WORDS)],
    )
    return {
        "model": MODEL,
        "prompt": f"{prompt} (case {salt}-{i})",
        "tags": ["bench"],
        "expected": {"type": "max_words", "value": 1},
    }


def ensure_hub(home: Path, existing: int) -> None:
    """The bundled model and `existing` reports (made once; later runs reuse them)."""
    hub = Hub.open(home, write_rate_per_minute=0)
    try:
        with hub.session() as s:
            have = len(list_reports(s, ReportQuery(limit=existing + 1)))
        if have == 0:
            import_model(hub, f"bundled:{MODEL}", MODEL)
        if have < existing:
            boss = accounts.owner(hub)
            items = [(i, parse_report(report(i, "seed"))) for i in range(have, existing)]
            print(f"filing {len(items)} reports to start from ({existing} in all)…", flush=True)
            for start in range(0, len(items), 1000):
                submit(hub, items[start : start + 1000], boss, "import")
    finally:
        hub.close()


def tokens(home: Path, n: int) -> list[str]:
    hub = Hub.open(home)
    try:
        out = []
        boss = accounts.owner(hub)
        for k in range(n):
            name = f"bench{k}"
            if name not in {u["name"] for u in accounts.list_users(hub, boss)}:
                accounts.add_user(hub, boss, name, "reporter")
            out.append(str(accounts.create_token(hub, boss, name, expires=None)["token"]))
        return out
    finally:
        hub.close()


def run_clients(url: str, secrets: list[str], n: int, salt: str) -> tuple[float, list[float]]:
    """`n` reports over len(secrets) concurrent clients; (wall seconds, latencies in s)."""
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[str] = []
    per = n // len(secrets)

    def client(k: int) -> None:
        headers = {"Authorization": f"Bearer {secrets[k]}"}
        mine = []
        with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
            for i in range(per):
                body = report(k * per + i, f"{salt}-{k}")
                t = time.perf_counter()
                r = http.post("/api/reports", json=body)
                mine.append(time.perf_counter() - t)
                if r.status_code != 201:
                    failures.append(f"{r.status_code} {r.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(secrets))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} filings failed, e.g. {failures[0]}")
    return wall, latencies


def where_time_goes(home: Path, n: int = 40) -> dict[str, float]:
    """One filing's parts, in-process, median ms over `n` filings."""
    from upstream import reports as domain

    hub = Hub.open(home, write_rate_per_minute=0)
    try:
        secret = tokens(home, 1)[0]
        parts: dict[str, list[float]] = {"authenticate": [], "validate": [], "file": []}
        domain.submit_one(hub, parse_report(report(0, "warm")), accounts.owner(hub), "api")
        for i in range(n):
            t0 = time.perf_counter()
            actor: Actor = accounts.authenticate(hub, secret)
            t1 = time.perf_counter()
            item = parse_report(report(i, f"parts-{time.time()}"))
            with hub.session() as s:
                prepare(s, item, hub.settings.max_prompt_chars)
            t2 = time.perf_counter()
            domain.submit_one(hub, item, actor, "api")
            t3 = time.perf_counter()
            parts["authenticate"].append(t1 - t0)
            parts["validate"].append(t2 - t1)
            parts["file"].append(t3 - t2)
        return {k: 1000 * statistics.median(v) for k, v in parts.items()}
    finally:
        hub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-filing"))
    parser.add_argument("--existing", type=int, default=10_000)
    parser.add_argument("--n", type=int, default=1600, help="reports filed per run")
    parser.add_argument("--clients", default="1,8", help="client counts, comma-separated")
    parser.add_argument("--port", type=int, default=8431)
    args = parser.parse_args()
    home = Path(args.home)
    ensure_hub(home, args.existing)
    counts = [int(c) for c in args.clients.split(",")]
    secrets = tokens(home, max(counts))
    rows = []
    server = serve(home, args.port)
    url = f"http://127.0.0.1:{args.port}"
    try:
        run_clients(url, secrets[:1], 20, f"warm-{time.time()}")  # loads the embedder
        for c in counts:
            n = args.n if c > 1 else args.n // 4
            wall, lat = run_clients(url, secrets[:c], n, f"{c}-{time.time()}")
            ms = sorted(x * 1000 for x in lat)
            rows.append(
                (
                    c,
                    len(ms),
                    wall,
                    len(ms) / wall,
                    statistics.median(ms),
                    ms[int(0.99 * (len(ms) - 1))],
                )
            )
    finally:
        server.terminate()
        server.wait()
    parts = where_time_goes(home)
    print(
        f"\nfiling through POST /api/reports on a hub holding {args.existing:,} reports "
        f"(duplicate detection on), {platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print(f"{'clients':>8}{'reports':>9}{'wall s':>9}{'reports/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    for c, n, wall, rate, p50, p99 in rows:
        print(f"{c:>8}{n:>9}{wall:>9.1f}{rate:>11.1f}{p50:>9.1f}{p99:>9.1f}")
    print(
        "\none filing in-process, median ms: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
    )


if __name__ == "__main__":
    main()
