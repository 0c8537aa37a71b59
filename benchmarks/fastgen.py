"""The lean greedy loop (`upstream.engines.fastgen`) vs the current engine (`generate`) on SmolLM2.

    python -m benchmarks.fastgen [--home DIR] [--n 100] [--max-new-tokens 64]
                                 [--batch-sizes 32,100] [--no-one-by-one] [--long K]

Imports the bundled SmolLM2-135M-Instruct into a benchmark hub (once), encodes ~100
short instructions with its chat template, and times on the CPU, fp32, greedy:

- `HFEngine` with batch 32 (HF `generate`, left padding): the current engine;
- `greedy_generate` with each batch size of `--batch-sizes`;
- `HFEngine` one by one (the reference for token equality), unless `--no-one-by-one`;
- `greedy_generate` with every prompt of a batch prefilled in one padded forward, as
  before 2026-12-07 (now prompts of like length are prefilled together).

`--long K` gives every K-th prompt a long context first (the other instructions, about
600 tokens), as a report that quotes a document would: the prompts' lengths then differ
by much more than the template's.

Prints wall seconds, generated tokens/s, the speed-up over the current engine, and how
many outputs are token-for-token identical to the one-by-one (and batch-32) outputs.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.prompts import instructions
from upstream.engines import fastgen
from upstream.engines.base import GenRequest
from upstream.engines.fastgen import greedy_generate, supports
from upstream.engines.hf import HFEngine
from upstream.hub import Hub
from upstream.registry import import_model, resolve

NAME = "smollm2-135m-instruct"


def timed(run: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    outputs = run()
    return time.perf_counter() - start, outputs  # wall seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-bench"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="32,100")
    parser.add_argument("--no-one-by-one", action="store_true")
    parser.add_argument("--long", type=int, default=0, help="every K-th prompt gets a long context")
    args = parser.parse_args()

    hub = Hub.open(args.home)
    import_model(hub, f"bundled:{NAME}", NAME)  # once: later calls find it by its hash
    with hub.session() as s:
        rev = resolve(s, NAME)
    engine = HFEngine.for_revision(hub, rev, batch_size=32)
    model, tok = engine.loaded.model, engine.loaded.tokenizer
    assert supports(model), "SmolLM2 (Llama) should be supported"
    texts = instructions()[: args.n]
    if args.long:
        context = "Some notes:\n" + "\n".join(instructions()[:40]) + "\n\n"
        texts = [context + t if i % args.long == 0 else t for i, t in enumerate(texts)]
    requests = [GenRequest.from_prompt(p, max_new_tokens=args.max_new_tokens) for p in texts]
    prompts = [engine.encode(r) for r in requests]
    eos = [model.generation_config.eos_token_id, tok.eos_token_id]
    eos = sorted({e for e in eos if e is not None})

    def hf(batch_size: int) -> Callable[[], list[list[int]]]:
        run = HFEngine(engine.loaded, batch_size=batch_size)
        return lambda: [r.token_ids for r in run.generate(requests)]

    def fast(batch_size: int, one_prefill: bool = False) -> Callable[[], list[list[int]]]:
        def run() -> list[list[int]]:
            cost = fastgen.FORWARD_COST_TOKENS
            if one_prefill:  # the cheapest split is then always one forward
                fastgen.FORWARD_COST_TOKENS = 10**9
            try:
                return greedy_generate(
                    model,
                    prompts,
                    args.max_new_tokens,
                    eos,
                    tok.pad_token_id,
                    batch_size=batch_size,
                )
            finally:
                fastgen.FORWARD_COST_TOKENS = cost

        return run

    HFEngine(engine.loaded, batch_size=4).generate(requests[:4])  # warm-up: lazy kernels
    rows: list[tuple[str, float, list[list[int]]]] = []
    rows.append(("generate, batch 32", *timed(hf(32))))
    for size in [int(b) for b in args.batch_sizes.split(",")]:
        rows.append((f"fastgen, batch {size}", *timed(fast(size))))
        rows.append(("  one padded prefill", *timed(fast(size, one_prefill=True))))
    reference = None
    if not args.no_one_by_one:
        rows.append(("generate, 1 by 1", *timed(hf(1))))
        reference = rows[-1][2]

    import torch

    print(
        f"\nSmolLM2-135M-Instruct, fp32, greedy, {len(prompts)} prompts, "
        f"max_new_tokens={args.max_new_tokens}"
        + (f", every {args.long}th with a long context" if args.long else "")
    )
    lengths = sorted(len(p) for p in prompts)
    print(f"prompt tokens: {lengths[0]} to {lengths[-1]}, {sum(lengths)} in all")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads\n"
    )
    print(
        f"{'mode':<22}{'wall s':>8}{'tokens/s':>10}{'speed-up':>10}"
        f"{'same as b32':>13}{'same as 1x1':>13}"
    )
    base_wall, base_out = rows[0][1], rows[0][2]
    for mode, wall, outputs in rows:
        tokens = sum(len(o) for o in outputs)
        same32 = sum(a == b for a, b in zip(outputs, base_out, strict=True))
        same1 = (
            f"{sum(a == b for a, b in zip(outputs, reference, strict=True))}/{len(outputs)}"
            if reference is not None
            else "-"
        )
        print(
            f"{mode:<22}{wall:>8.1f}{tokens / wall:>10.1f}{base_wall / wall:>9.2f}x"
            f"{f'{same32}/{len(outputs)}':>13}{same1:>13}"
        )


if __name__ == "__main__":
    main()
