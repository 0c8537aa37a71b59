"""Decoding steps with transformers' cache layer (concatenating) vs the lean loop's (room).

    python -m benchmarks.kv_cache [--home DIR] [--shapes 16x120,64x100] [--reps 6]

Imports the bundled SmolLM2-135M-Instruct into a benchmark hub (once) and loads it as the
engine does (packed weights). For each shape ROWSxCOLUMNS: runs random prompts of that
many rows and columns, then 40 greedy decoding steps, once with `DynamicCache` (every step
copies each layer's keys and values into a new tensor one column wider) and once with
`fastgen.new_cache` (each step writes its column into room kept for it), alternating,
`--reps` times. Prints the median step of each run, and whether both chose the same
tokens at every step.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from upstream.engines.fastgen import new_cache
from upstream.engines.hf import load_model
from upstream.hub import Hub
from upstream.registry import import_model, resolve
from upstream.threads import in_fresh_thread

NAME = "smollm2-135m-instruct"
STEPS = 40


def loaded_model(home: Path) -> Any:
    hub = Hub.open(home)
    try:
        import_model(hub, f"bundled:{NAME}", NAME)  # once: later calls find it by its hash
        with hub.session() as s:
            revision = resolve(s, NAME)
        return load_model(hub, revision).model
    finally:
        hub.close()


def steps(model: Any, rows: int, columns: int, room: bool) -> tuple[float, Any]:
    """(median seconds a step, the tokens chosen (rows, STEPS))."""
    import torch
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (rows, columns), generator=g)
    cache = new_cache(model.config) if room else DynamicCache(config=model.config)
    times, chosen = [], []
    with torch.inference_mode():
        model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)
        mask = torch.ones(rows, columns, dtype=torch.bool)
        positions = torch.full((rows, 1), columns)
        token = ids[:, -1:]
        for _ in range(STEPS):
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            start = time.perf_counter()
            out = model(
                input_ids=token,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            times.append(time.perf_counter() - start)
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            positions = positions + 1
            chosen.append(token)
    return statistics.median(times), torch.cat(chosen, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--shapes", default="16x120,64x100", help="ROWSxCOLUMNS,...")
    parser.add_argument("--reps", type=int, default=6)
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="upstream-kv-")) / "home"
    model = in_fresh_thread(loaded_model, home)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; SmolLM2 packed float32, "
          f"{STEPS} steps a run, runs alternating")  # fmt: skip
    print()
    print("| rows × columns | concatenating, ms a step | room, ms a step | room / concat | same |")
    print("|---|---:|---:|---:|---:|")
    for shape in args.shapes.split(","):
        rows, columns = (int(x) for x in shape.lower().split("x"))
        concat, room, same = [], [], True
        for _ in range(args.reps):
            a, tokens_a = steps(model, rows, columns, room=False)
            b, tokens_b = steps(model, rows, columns, room=True)
            concat.append(a)
            room.append(b)
            same = same and bool((tokens_a == tokens_b).all())
        c, r = statistics.median(concat) * 1000, statistics.median(room) * 1000
        verdict = "yes" if same else "NO"
        print(f"| {rows} × {columns} | {c:.1f} | {r:.1f} | {r / c:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
