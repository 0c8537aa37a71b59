"""Upstream vs mergekit merging the same LoRA adapters into SmolLM2-135M-Instruct.

    benchmarks/setup_mergekit.sh          # once: mergekit in .venv-mergekit
    python -m benchmarks.merge_vs_mergekit [--work DIR] [--repeat 1] [--mergekit PATH]

Builds 4 random LoRA adapters (rank 16, alpha 32, on q, k, v, o, gate, up and down of every
layer; nonzero A and B from fixed seeds) on the bundled SmolLM2, then merges 1 and 4 of
them with `linear` (task arithmetic, every weight 1) and `ties` (density 0.5, every
weight 1) in Upstream (`upstream.merging.merge`) and in mergekit (`mergekit-yaml`, each
adapter given as `base+adapter`), each run in a fresh process started end to end, with its
peak resident memory taken by GNU time. Prints wall seconds, peak RSS, and the largest
absolute difference between the two tools' output tensors with the number of entries
that differ by more than 1e-5.

mergekit runs on the CPU with its fastest options here: `--no-cuda --lazy-unpickle
--async-write -j 2 --lora-merge-cache <fresh dir per run>` (every run applies its LoRAs
afresh, as a release would; -j and --async-write changed its time by under 6 %). Its
`ties` is given `normalize: true`, which with weights of 1 is the same disjoint mean as
Upstream's; its task_arithmetic has normalize off by default.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODEL = "smollm2"
N_ADAPTERS = 4
RANK, ALPHA = 16, 32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DENSITY = 0.5
CASES = [("linear", 1), ("linear", 4), ("ties", 1), ("ties", 4)]
MERGEKIT_METHOD = {"linear": "task_arithmetic", "ties": "ties"}
DIFF_TOLERANCE = 1e-5  # entries further apart than this are counted
GNU_TIME = "/usr/bin/time"  # Debian package `time`


def base_model(work: Path) -> Path:
    """SmolLM2 imported into a hub under `work` and materialised as a model directory."""
    from upstream.hub import Hub
    from upstream.registry import import_model, materialize, resolve

    hub = Hub.open(work / "hub")
    try:
        import_model(hub, "bundled:smollm2-135m-instruct", MODEL)
        with hub.session() as s:
            return materialize(hub, resolve(s, MODEL))
    finally:
        hub.close()


def build_adapters(base: Path, root: Path) -> list[Path]:
    """N_ADAPTERS LoRA adapters saved by PEFT, with random A and B from fixed seeds."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    dirs = [root / f"adapter-{i}" for i in range(N_ADAPTERS)]
    for i, out in enumerate(dirs):
        if (out / "adapter_model.safetensors").exists():
            continue
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS)
        peft_model = get_peft_model(model, config)
        g = torch.Generator().manual_seed(1000 + i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_A" in name:  # (r, in)
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
                elif "lora_B" in name:  # (out, r)
                    p.copy_(torch.randn(p.shape, generator=g) * 0.01)
        peft_model.save_pretrained(out)
    return dirs


def run_measured(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command, its peak taken by GNU time.

    Not `os.wait4` on a child of this process: Linux carries the larger peak across
    exec, so a child forked from this process (which has held the model) would report
    this process's peak as its own. GNU time forks the command from its own small process.
    """
    peak = log.with_suffix(".rss")
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", str(peak), *cmd], env=env, stdout=out, stderr=out
        )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}); see {log}:\n{tail}")
    return wall, int(peak.read_text().split()[-1]) / 1024  # %M is in KiB


def upstream_cmd(base: Path, adapters: list[Path], method: str, out: Path) -> list[str]:
    spec = {
        "base": str(base),
        "adapters": [str(a) for a in adapters],
        "method": method,
        "out": str(out),
    }
    return [sys.executable, "-m", "benchmarks.merge_vs_mergekit", "--child", json.dumps(spec)]


def child(spec_json: str) -> None:
    """Upstream's side of one run, in its own process."""
    from upstream.merging import check_params, merge

    spec = json.loads(spec_json)
    n = len(spec["adapters"])
    density = DENSITY if spec["method"] != "linear" else None
    params = check_params(spec["method"], n, density=density)
    result = merge(
        Path(spec["base"]), [Path(a) for a in spec["adapters"]], params, Path(spec["out"])
    )
    print(json.dumps(result.as_dict()))


def mergekit_cmd(
    mergekit: Path, base: Path, adapters: list[Path], method: str, out: Path, cache: Path
) -> list[str]:
    """mergekit-yaml on a config equivalent to Upstream's parameters."""
    params: dict[str, Any] = {"weight": 1.0}
    if method == "ties":
        params["density"] = DENSITY
    config: dict[str, Any] = {
        "merge_method": MERGEKIT_METHOD[method],
        "base_model": str(base),
        "models": [{"model": f"{base}+{a}", "parameters": params} for a in adapters],
        "dtype": "float32",
    }
    if method == "ties":
        config["parameters"] = {"normalize": True}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return [
        str(mergekit),
        str(path),
        str(out),
        "--no-cuda",
        "--lazy-unpickle",
        "--lora-merge-cache",
        str(cache),
        "-j",
        str(os.cpu_count() or 1),
        "--async-write",
        "--quiet",
    ]


def max_abs_diff(a_dir: Path, b_dir: Path) -> tuple[float, int, int]:
    """(largest |a - b|, entries further apart than DIFF_TOLERANCE, tensors compared)."""
    from safetensors import safe_open

    def where(d: Path) -> dict[str, Path]:
        index = d / "model.safetensors.index.json"
        if index.exists():
            return {k: d / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(d / "model.safetensors", framework="pt") as f:
            return {k: d / "model.safetensors" for k in f.keys()}  # noqa: SIM118

    a, b = where(a_dir), where(b_dir)
    worst, off = 0.0, 0
    for key in sorted(a.keys() & b.keys()):
        with safe_open(a[key], framework="pt") as fa, safe_open(b[key], framework="pt") as fb:
            diff = (fa.get_tensor(key).float() - fb.get_tensor(key).float()).abs()
        worst = max(worst, float(diff.max()))
        off += int((diff > DIFF_TOLERANCE).sum())
    return worst, off, len(a.keys() & b.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "upstream-merge-bench"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the fastest is kept")
    parser.add_argument("--mergekit", default=".venv-mergekit/bin/mergekit-yaml")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    if not Path(GNU_TIME).exists():
        raise SystemExit(f"{GNU_TIME} not found: install GNU time (apt-get install time)")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    mergekit = Path(args.mergekit)
    if not mergekit.exists():
        print(f"{mergekit} not found: run benchmarks/setup_mergekit.sh first; Upstream alone.")
    base = base_model(work)
    adapters = build_adapters(base, work / "adapters")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for method, n in CASES:
        runs = work / "runs" / f"{method}-{n}"
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir(parents=True)
        best: dict[str, tuple[float, float]] = {}
        for r in range(args.repeat):
            tools = {"Upstream": upstream_cmd(base, adapters[:n], method, runs / f"upstream-{r}")}
            if mergekit.exists():
                cache = runs / f"lora-cache-{r}"
                tools["mergekit"] = mergekit_cmd(
                    mergekit, base, adapters[:n], method, runs / f"mergekit-{r}", cache
                )
            for tool, cmd in tools.items():
                wall, rss = run_measured(cmd, env, runs / f"{tool}-{r}.log")
                if tool not in best or wall < best[tool][0]:
                    best[tool] = (wall, rss)
                print(f"  {method} x{n} {tool} run {r + 1}: {wall:.1f} s, {rss:.0f} MB", flush=True)
        diff = (
            max_abs_diff(runs / "upstream-0", runs / "mergekit-0") if "mergekit" in best else None
        )
        rows.append((method, n, best, diff))
        for r in range(args.repeat):  # keep the disk small: outputs are 540 MB each
            for d in ("upstream", "mergekit", "lora-cache"):
                shutil.rmtree(runs / f"{d}-{r}", ignore_errors=True)

    load = os.getloadavg()
    print(
        f"\nSmolLM2-135M-Instruct fp32, {N_ADAPTERS} adapters r={RANK} alpha={ALPHA} on "
        f"{', '.join(TARGETS)}; ties density {DENSITY}; every weight 1.0\n"
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n"
    )
    print(
        f"{'method':<8}{'adapters':>9}  {'tool':<9}{'wall s':>8}{'peak RSS MB':>13}"
        f"{'time vs Upstream':>18}{'max |diff|':>12}{'entries > 1e-5':>16}"
    )
    for method, n, best, diff in rows:
        ours = best["Upstream"][0]
        for tool, (wall, rss) in best.items():
            extra = f"{'':>12}{'':>16}"
            if tool == "mergekit" and diff is not None:
                extra = f"{diff[0]:>12.2e}{diff[1]:>16,}"
            print(
                f"{method:<8}{n:>9}  {tool:<9}{wall:>8.1f}{rss:>13.0f}{wall / ours:>17.2f}x{extra}"
            )


if __name__ == "__main__":
    main()
