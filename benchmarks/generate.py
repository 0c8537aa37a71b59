"""Batched vs one-by-one greedy generation with SmolLM2 on this machine.

    python benchmarks/generate.py [--home DIR] [--n 100] [--max-new-tokens 64]

Imports the bundled SmolLM2-135M-Instruct into a benchmark hub (once), then generates
answers to ~100 short instructions one by one and in batches, and prints prompts/s,
generated tokens/s, the speed-up over one by one, and how many outputs are identical
to the one-by-one outputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.prompts import instructions
from upstream.engines.base import GenRequest
from upstream.engines.hf import HFEngine
from upstream.hub import Hub
from upstream.registry import import_model, resolve

NAME = "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-bench"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="8,16,32")
    args = parser.parse_args()

    hub = Hub.open(args.home)
    import_model(hub, f"bundled:{NAME}", NAME)
    with hub.session() as s:
        rev = resolve(s, NAME)
    prompts = instructions()[: args.n]
    requests = [GenRequest.from_prompt(p, max_new_tokens=args.max_new_tokens) for p in prompts]
    engine = HFEngine.for_revision(hub, rev, batch_size=1)
    engine.generate(requests[:2])  # warm-up: first-call allocations, lazy kernels

    rows = []
    reference = None
    for batch_size in [1] + [int(b) for b in args.batch_sizes.split(",")]:
        run = HFEngine(engine.loaded, batch_size=batch_size)
        start = time.perf_counter()
        results = run.generate(requests)
        wall = time.perf_counter() - start  # seconds
        tokens = sum(r.completion_tokens for r in results)
        if reference is None:
            reference = results
        same = sum(a.token_ids == b.token_ids for a, b in zip(results, reference, strict=True))
        rows.append((batch_size, wall, len(results) / wall, tokens / wall, same))

    base_wall = rows[0][1]
    import torch

    print(
        f"\nSmolLM2-135M-Instruct, fp32, greedy, {len(prompts)} prompts, "
        f"max_new_tokens={args.max_new_tokens}"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(
        f"{'mode':<16}{'wall s':>9}{'prompts/s':>11}{'tokens/s':>10}{'speed-up':>10}"
        f"{'same as 1x1':>13}"
    )
    for batch_size, wall, pps, tps, same in rows:
        mode = "one by one" if batch_size == 1 else f"batch {batch_size}"
        print(
            f"{mode:<16}{wall:>9.1f}{pps:>11.2f}{tps:>10.1f}{base_wall / wall:>9.1f}x"
            f"{same:>8}/{len(prompts)}"
        )


if __name__ == "__main__":
    main()
