"""Where a first `upstream eval` in its own process spends its time before generating.

    python -m benchmarks.cold_start [--home DIR] [--repeat 3]

Runs, in fresh processes, (1) `upstream eval` of a one-case suite end to end, and (2) the
same steps one by one with a timer around each: starting Python, the CLI's imports,
opening the hub, `import torch`, transformers' classes, the tokenizer, the weights,
packing them, the first generation and the exit. Prints the median of `--repeat` runs of
each phase, in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.eval_vs_lm_eval import clear_outputs
from upstream.hub import Hub
from upstream.registry import import_model, materialize, resolve
from upstream.suites import CaseIn, add_cases

MODEL = "smollm2-135m-instruct"
SUITE = "cold-start"

# The steps of a cold `upstream eval`, each timed; prints {phase: seconds} as JSON.
PHASES = r"""
import json, sys, time
mark = time.monotonic()  # the same clock as the parent's
t = {"start Python": mark - float(sys.argv[3])}
def lap(name):
    global mark
    now = time.monotonic(); t[name] = now - mark; mark = now
import upstream.cli
lap("CLI imports (typer, rich, SQLAlchemy, domain)")
from benchmarks.eval_vs_lm_eval import clear_outputs
from upstream.hub import Hub
from upstream.registry import resolve
hub = Hub.open(sys.argv[1])
with hub.session() as s:
    rev = resolve(s, sys.argv[2])
lap("open the hub, resolve the revision")
import torch
lap("import torch")
from transformers import AutoModelForCausalLM, AutoTokenizer
lap("transformers' model and tokenizer classes")
from upstream.engines import hf
path = hub.revision_dir(rev)
tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
lap("tokenizer (and the config's imports)")
model = hf.load_weights(path)
lap("weights (and the model's modeling code)")
from upstream.engines.packed import pack_linears
model.eval(); pack_linears(model)
lap("packing the weights")
loaded = hf.LoadedModel(model, tok, (rev.hash,))
tok.padding_side = "left"
engine = hf.HFEngine(loaded)
from upstream.engines.base import GenRequest
engine.generate([GenRequest.from_prompt("What is 2 + 2?", max_new_tokens=8)])
lap("first generation (8 tokens)")
print(json.dumps(t), flush=True)
import os
os._exit(0)  # as the CLI ends: exit handlers and flush, no interpreter teardown
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-cold"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    hub = Hub.open(args.home)
    import_model(hub, f"bundled:{MODEL}", MODEL)
    with hub.session() as s:
        materialize(hub, resolve(s, MODEL))
    check = {"type": "max_words", "value": 40}
    add_cases(hub, SUITE, [CaseIn([{"role": "user", "content": "Hi"}], check, [])], MODEL)
    env = {
        **os.environ,
        "UPSTREAM_HOME": args.home,
        "UPSTREAM_HAND_OVER_JOBS": "false",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    whole, phases = [], []
    for _ in range(args.repeat):
        clear_outputs(hub, [[{"role": "user", "content": "Hi"}]])  # it is generated again
        cmd = [sys.executable, "-m", "upstream", "eval", MODEL, "--suite", SUITE]
        cmd += ["--full-outputs", "--max-new-tokens", "8"]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        whole.append(time.perf_counter() - start)
        start = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", PHASES, args.home, MODEL, repr(start)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        total = time.monotonic() - start
        t = json.loads(out.stdout.strip().splitlines()[-1])
        t["exit"] = total - sum(t.values())
        phases.append(t)
    print(f"\nfirst `upstream eval` in its own process, median of {args.repeat} runs\n")
    print(f"{'phase':<48}{'s':>7}")
    for name in phases[0]:
        print(f"{name:<48}{statistics.median(p[name] for p in phases):>7.2f}")
    print(f"{'sum of the phases':<48}{statistics.median(sum(p.values()) for p in phases):>7.2f}")
    print(f"{'`upstream eval`, 1 case, 8 tokens, end to end':<48}{statistics.median(whole):>7.2f}")


if __name__ == "__main__":
    main()
