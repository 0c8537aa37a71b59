"""bfloat16 matrix products for evaluation (setting `bf16_products`): how much faster, and
how many greedy outputs and verdicts stay the same as in float32.

    python -m benchmarks.bf16_eval [--home DIR]

On the two suites of `benchmarks/eval_vs_lm_eval.py` (100 short instructions with
`max_words 40` at 64 tokens, 100 one-word/number/yes-no questions with `exact` checks at
128 tokens), SmolLM2-135M-Instruct is loaded twice in this process, packed in float32
and in bfloat16, and every prompt generated in full by each; then again with answers
stopping at their verdict. Prints seconds per run, identical outputs and identical
verdicts. Needs a CPU with bfloat16 units (AMX or AVX512-BF16).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.eval_vs_lm_eval import MODEL, format_suite, short_suite
from upstream.checks import decided, parse_check
from upstream.engines.base import GenRequest
from upstream.engines.hf import HFEngine, load_from_dir
from upstream.engines.packed import bf16_supported
from upstream.hub import Hub
from upstream.registry import import_model, materialize, resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-bench"))
    args = parser.parse_args()
    if not bf16_supported():
        raise SystemExit("this CPU has no bfloat16 matrix units")
    hub = Hub.open(args.home)
    import_model(hub, f"bundled:{MODEL}", MODEL)
    with hub.session() as s:
        model_dir = materialize(hub, resolve(s, MODEL))
    engines = {
        "float32": HFEngine(load_from_dir(model_dir)),
        "bfloat16": HFEngine(load_from_dir(model_dir, bf16=True)),
    }
    print(f"SmolLM2-135M-Instruct greedy; {platform.machine()}, {os.cpu_count()} CPUs\n")
    print(
        f"{'suite':<8}{'answers':<9}{'fp32 s':>8}{'bf16 s':>8}{'fp32 tok':>10}{'bf16 tok':>10}"
        f"{'same output':>13}{'same verdict':>14}"
    )
    for spec in (short_suite(), format_suite()):
        checks = [parse_check(c.expected) for c in spec.cases]
        for mode in ("full", "early"):
            texts, seconds, tokens = {}, {}, {}
            for name, engine in engines.items():
                requests = [
                    GenRequest(
                        messages=c.messages,
                        max_new_tokens=spec.max_new_tokens,
                        until=(lambda t, k=k: decided(k, t) is not None)
                        if mode == "early"
                        else None,
                    )
                    for c, k in zip(spec.cases, checks, strict=True)
                ]
                start = time.perf_counter()
                results = engine.generate(requests)
                seconds[name] = time.perf_counter() - start
                texts[name] = [r.text for r in results]
                tokens[name] = sum(r.completion_tokens for r in results)
            same = sum(a == b for a, b in zip(texts["float32"], texts["bfloat16"], strict=True))
            verdicts = sum(
                k.score(a).passed == k.score(b).passed
                for k, a, b in zip(checks, texts["float32"], texts["bfloat16"], strict=True)
            )
            n = len(spec.cases)
            print(
                f"{spec.name:<8}{mode:<9}{seconds['float32']:>8.1f}{seconds['bfloat16']:>8.1f}"
                f"{tokens['float32']:>10}{tokens['bfloat16']:>10}{same:>9}/{n}{verdicts:>10}/{n}"
            )


if __name__ == "__main__":
    main()
