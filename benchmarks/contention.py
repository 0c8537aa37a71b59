"""`upstream eval` alone and beside another torch process, by OpenMP wait policy.

    python -m benchmarks.contention [--home DIR] [--n 100]

Each run is a fresh `upstream eval` process with its output cache cleared; the
neighbour is a process doing bursts of 512×512 matrix products on the same cores, as a
second job or a training run would. Prints wall seconds for each policy.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import delete

from benchmarks.prompts import instructions
from upstream.db.schema import EvalOutput
from upstream.hub import Hub
from upstream.registry import import_model
from upstream.suites import CaseIn, add_cases

MODEL = "smollm2-135m-instruct"
NEIGHBOUR = """
import time, torch
a = torch.randn(512, 512)
while True:
    for _ in range(50):
        a @ a
    time.sleep(0.01)
"""


def run(home: Path, suite: str, policy: str, neighbour: bool) -> float:
    hub = Hub.open(home)
    with hub.session() as s, s.begin():
        s.execute(delete(EvalOutput))
    hub.close()
    env = {**os.environ, "UPSTREAM_HOME": str(home), "OMP_WAIT_POLICY": policy}
    if not policy:  # the library's default
        del env["OMP_WAIT_POLICY"]
    other = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=env) if neighbour else None
    try:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "upstream", "eval", MODEL, "--suite", suite,
             "--max-new-tokens", "64", "--json"],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return time.perf_counter() - start  # wall seconds
    finally:
        if other is not None:
            other.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-bench"))
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    home = Path(args.home)
    hub = Hub.open(home)
    import_model(hub, f"bundled:{MODEL}", MODEL)
    suite = f"contention-{args.n}"
    cases = [
        CaseIn([{"role": "user", "content": p}], {"type": "max_words", "value": 40}, ["bench"])
        for p in (instructions() * 2)[: args.n]
    ]
    add_cases(hub, suite, cases, MODEL, heldout_percent=0)
    hub.close()
    print(f"\n{args.n} cases, SmolLM2 fp32, max_new_tokens=64, {os.cpu_count()} CPUs")
    print(f"{'OMP_WAIT_POLICY':<18}{'alone s':>10}{'beside torch s':>16}")
    for policy in ("", "ACTIVE", "PASSIVE"):
        alone = run(home, suite, policy, False)
        crowded = run(home, suite, policy, True)
        print(f"{policy or 'unset':<18}{alone:>10.1f}{crowded:>16.1f}")


if __name__ == "__main__":
    main()
