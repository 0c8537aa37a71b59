"""Filing 1,000 reports: through the REST API one at a time, and as one CLI JSONL file.

    python -m benchmarks.reports [--home DIR] [--n 1000]

Duplicate detection is on (exact content hash and embedding nearest-neighbour); the
reproduction jobs the filings create are queued, not run, so the figures are those of
filing. Prints reports/s for both paths and the p50/p99 latency of one API filing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.prompts import COUNTRIES
from upstream import accounts
from upstream.hub import Hub
from upstream.registry import import_model

MODEL = "smollm2-135m-instruct"
SUBJECTS = [
    *COUNTRIES,
    "Spain",
    "Ghana",
    "Nepal",
    "Cuba",
    "Fiji",
    "Laos",
    "Mali",
    "Oman",
    "Chad",
    "Iraq",
]
TEMPLATES = [
    "What is the capital of {s}? Answer with one word.",
    "Name the largest city in {s}.",
    "What language is spoken in {s}? One word.",
    "Write a haiku about the food of {s}.",
    "What currency does {s} use?",
    "How many people live in {s}? Give a number.",
    "What is the national animal of {s}?",
    "List three rivers in {s}.",
    "When did {s} become independent? Answer with a year.",
    "Describe the flag of {s} in one sentence.",
]


def reports(n: int, salt: str) -> list[dict]:
    out = []
    for i in range(n):
        t = TEMPLATES[i % len(TEMPLATES)]
        s = SUBJECTS[(i // len(TEMPLATES)) % len(SUBJECTS)]
        prompt = t.format(s=s) + ("" if i < 200 else f" (case {salt}-{i})")
        out.append(
            {
                "model": MODEL,
                "prompt": prompt,
                "tags": ["bench"],
                "expected": {"type": "max_words", "value": 1},
            }
        )
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(home: Path, port: int) -> subprocess.Popen[bytes]:
    """`upstream up --no-worker` on `home` (write rate limit off), once it answers."""
    env = {**os.environ, "UPSTREAM_HOME": str(home), "UPSTREAM_WRITE_RATE_PER_MINUTE": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "upstream", "up", "--port", str(port), "--no-import", "--no-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.terminate()
    raise SystemExit("the hub did not start")


def bench_api(home: Path, items: list[dict], token: str) -> tuple[float, list[float]]:
    port = free_port()
    server = serve(home, port)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url, timeout=60, headers=auth) as client:
            client.post("/api/reports", json=items[0])  # warm-up: loads the embedding model
            latencies = []
            start = time.perf_counter()
            for item in items[1:]:
                t = time.perf_counter()
                r = client.post("/api/reports", json=item)
                latencies.append(time.perf_counter() - t)  # seconds
                r.raise_for_status()
            total = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait()
    return total, latencies


def bench_cli(home: Path, items: list[dict]) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    env = {**os.environ, "UPSTREAM_HOME": str(home)}
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "upstream",
            "reports",
            "file",
            "--jsonl",
            f.name,
            "--no-reproduce",
            "--json",
        ],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start  # seconds, process start and model loads included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-bench"))
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    home = Path(args.home)
    hub = Hub.open(home)
    import_model(hub, f"bundled:{MODEL}", MODEL)
    boss = accounts.owner(hub)
    if "bench" not in {u["name"] for u in accounts.list_users(hub, boss)}:
        accounts.add_user(hub, boss, "bench", "reporter")
    token = str(accounts.create_token(hub, boss, "bench")["token"])
    hub.close()
    salt = str(int(time.time()))
    api_total, lat = bench_api(home, reports(args.n + 1, salt + "a"), token)
    cli_total = bench_cli(home, reports(args.n, salt + "c"))
    lat_ms = sorted(x * 1000 for x in lat)
    p99 = lat_ms[int(0.99 * (len(lat_ms) - 1))]
    print(
        f"\nfiling {args.n} reports (duplicate detection on), "
        f"{platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print(f"{'path':<32}{'wall s':>9}{'reports/s':>11}{'p50 ms':>9}{'p99 ms':>9}")
    print(
        f"{'API, one POST per report':<32}{api_total:>9.1f}{len(lat) / api_total:>11.1f}"
        f"{statistics.median(lat_ms):>9.1f}{p99:>9.1f}"
    )
    print(
        f"{'CLI, one JSONL file':<32}{cli_total:>9.1f}{args.n / cli_total:>11.1f}{'-':>9}{'-':>9}"
    )


if __name__ == "__main__":
    main()
