"""Contributed LoRA adapters: checked against their base model before anything loads them.

An adapter is a PEFT directory (`adapter_config.json` + `adapter_model.safetensors`).
Everything here reads JSON and safetensors *headers* only: nothing is unpickled, no
tensor data is read, and the base model's weights are never loaded. What is checked,
and why:

- Files: exactly the two `ADAPTER_FILES`, plus `README.md` (PEFT's `save_pretrained`
  writes one) and `.gitattributes` (Hub downloads carry one). Pickle-capable files
  (`*.bin`, `*.pt`, ...) are refused by name, because loading a pickle can run code;
  anything else is refused so that nothing unreviewed rides along.
- Config: plain LoRA only, because merging later computes ΔW = B·A·alpha/r for every
  adapted Linear weight, with one `r` and one `lora_alpha` for the whole adapter.
  So DoRA, rsLoRA (scale alpha/√r), `rank_pattern`/`alpha_pattern`, `modules_to_save`
  (full module copies, not deltas), bias training, Conv1D layout (`fan_in_fan_out`)
  and initialisations that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, ...)
  are refused. Options this module does not know are refused unless they hold an
  "off" value (null, false, empty), so a newer PEFT feature fails closed.
- Weights: a valid safetensors header, at most `max_bytes`, float tensors only, and
  every tensor one half of a `base_model.model.<module>.lora_A/B.weight` pair.
- Fit: the adapter's `base_model_name_or_path` is only a hint anyone can write, so the
  fit is checked by structure: every adapted module must be a 2-D weight in the base's
  checkpoint, with lora_A (r, in) and lora_B (out, r) for its (out, in). Module paths
  are checkpoint key names, as PEFT saves them for the families the hub serves.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from upstream.errors import InvalidInput
from upstream.weights import PICKLE_SUFFIXES, weight_files

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# harmless text that tools write alongside, and the hub's own "materialized" marker
OPTIONAL_FILES = ("README.md", ".gitattributes", ".complete")
FLOAT_DTYPES = ("F32", "F16", "BF16")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
# `base_model.model.<module path>.lora_A.weight`, optionally `.lora_A.<adapter name>.weight`.
LORA_KEY_RE = re.compile(
    r"^base_model\.model\.(?P<path>.+)\.lora_(?P<half>[AB])(?:\.(?P<name>[^.]+))?\.weight$"
)
# Config keys that describe training or provenance and do not change ΔW = B·A·alpha/r.
# `r`, `lora_alpha`, `peft_type`, `target_modules`, `init_lora_weights` are checked below.
IGNORED_KEYS = {
    "auto_mapping", "base_model_name_or_path", "revision", "task_type", "inference_mode",
    "peft_version", "lora_dropout", "exclude_modules", "layers_to_transform", "layers_pattern",
    "megatron_core", "qalora_group_size", "eva_config", "ensure_weight_tying", "runtime_config",
    "r", "lora_alpha", "peft_type", "target_modules", "init_lora_weights",
}  # fmt: skip
# Initialisations that leave the base weights as they are (PiSSA, OLoRA, CorDA, LoftQ and
# LoRA-GA subtract their start from the base, so the adapter would not fit the original).
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
# Why a non-"off" value of a known option is refused, said to the contributor.
REFUSED_OPTIONS = {
    "use_dora": "DoRA rescales weight columns, which is not a B·A delta",
    "use_rslora": "rsLoRA scales by alpha/sqrt(r); train with use_rslora=false",
    "rank_pattern": "per-module ranks are not supported; use one r for all modules",
    "alpha_pattern": "per-module alphas are not supported; use one lora_alpha",
    "modules_to_save": "full module copies are not LoRA deltas",
    "fan_in_fan_out": "Conv1D (in, out) weight layout is not supported",
    "bias": "trained biases are not LoRA deltas; use bias='none'",
    "lora_bias": "a bias on lora_B is not a B·A delta",
    "trainable_token_indices": "trained token embeddings are not LoRA deltas",
    "target_parameters": "LoRA on raw parameters (e.g. MoE experts) is not supported",
    "layer_replication": "replicated layers change the base architecture",
    "alora_invocation_tokens": "activated LoRA applies only after its tokens; it cannot merge",
}
NAMES_SHOWN = 5  # how many offending names a refusal lists


@dataclass(frozen=True)
class AdapterInfo:
    """What a valid adapter changes, for the contribution record and the merge."""

    rank: int
    alpha: float
    target_modules: list[str]  # last names of the adapted modules, e.g. ["q_proj", "v_proj"]
    layers: int  # base modules that carry a LoRA pair
    parameters: int  # elements in all adapter tensors
    size_bytes: int  # of adapter_model.safetensors

    @property
    def scale(self) -> float:
        """The factor of B·A in ΔW (alpha / r; rsLoRA is refused)."""
        return self.alpha / self.rank

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- safetensors headers


def read_safetensors_header(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (dtype, shape) from a safetensors header, checked for sanity."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise InvalidInput(f"{path}: not a safetensors file (shorter than its 8-byte header)")
        header_len = int.from_bytes(prefix, "little")
        if not 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
            raise InvalidInput(
                f"{path}: not a safetensors file (header length {header_len} bytes; it must be "
                f"under {MAX_HEADER_BYTES} and within the file's {size} bytes)"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{path}: not a safetensors file (header is not JSON: {e})") from e
    if not isinstance(header, dict):
        raise InvalidInput(f"{path}: not a safetensors file (header is not a JSON object)")
    data_bytes = size - 8 - header_len
    tensors: dict[str, tuple[str, list[int]]] = {}
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = _check_entry(path, name, entry, data_bytes)
        tensors[name] = (dtype, shape)
        end = max(end, entry["data_offsets"][1])
    if end != data_bytes:
        raise InvalidInput(
            f"{path}: corrupt safetensors file (tensor data ends at byte {end} of {data_bytes})"
        )
    return tensors


def _check_entry(path: Path, name: str, entry: Any, data_bytes: int) -> tuple[str, list[int]]:
    """One header entry's (dtype, shape), refused if its offsets or size do not add up."""
    bad = f"{path}: corrupt safetensors header entry {name!r}"
    if not isinstance(entry, dict):
        raise InvalidInput(f"{bad} (not an object)")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        raise InvalidInput(f"{bad} (dtype {dtype!r})")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise InvalidInput(f"{bad} (shape {shape!r})")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise InvalidInput(f"{bad} (data_offsets {offsets!r} outside {data_bytes} data bytes)")
    if dtype in DTYPE_BYTES and offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise InvalidInput(f"{bad} ({offsets[1] - offsets[0]} bytes for {dtype} {shape})")
    return dtype, list(shape)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def base_weight_shapes(base_dir: Path) -> dict[str, list[int]]:
    """Every weight name -> shape in a HF model directory's safetensors, from headers only."""
    files = weight_files(base_dir)
    if not files:
        raise InvalidInput(f"{base_dir}: no weights found (expected *.safetensors files)")
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update({k: shape for k, (_, shape) in read_safetensors_header(f).items()})
    return shapes


# ---------------------------------------------------------------- adapters


def validate_adapter(
    adapter_dir: Path, base_dir: Path, max_rank: int = 64, max_bytes: int = 256 * 2**20
) -> AdapterInfo:
    """Check a LoRA adapter directory against a base model directory, reading headers only."""
    _check_files(adapter_dir)
    rank, alpha, targets = _check_config(adapter_dir, max_rank)
    weights = adapter_dir / ADAPTER_FILES[1]
    size = weights.stat().st_size
    if size > max_bytes:
        raise InvalidInput(
            f"{weights}: {size} bytes; adapters may be at most {max_bytes} bytes "
            f"({max_bytes / 2**20:g} MiB)"
        )
    tensors = read_safetensors_header(weights)
    pairs = _lora_pairs(weights, tensors)
    shapes = _check_fit(adapter_dir, base_dir, pairs, rank)
    if isinstance(targets, list):
        _check_targets(weights, targets, list(pairs))
    return AdapterInfo(
        rank=rank,
        alpha=alpha,
        target_modules=sorted({p.rsplit(".", 1)[-1] for p in pairs}),
        layers=len(pairs),
        parameters=sum(math.prod(shape) for shape in shapes),
        size_bytes=size,
    )


def adapter_files(adapter_dir: Path, max_bytes: int) -> list[Path]:
    """The files of an adapter folder to take, checked before any is read or copied:
    only the adapter's own files, regular (not links), the weights within `max_bytes`."""
    _check_files(adapter_dir)
    files = [adapter_dir / n for n in ADAPTER_FILES + OPTIONAL_FILES if (adapter_dir / n).exists()]
    links = [f.name for f in files if f.is_symlink() or not f.is_file()]
    if links:
        raise InvalidInput(f"{adapter_dir}: {', '.join(links)}: not regular files (links refused)")
    size = (adapter_dir / ADAPTER_FILES[1]).stat().st_size
    if size > max_bytes:
        raise InvalidInput(
            f"{adapter_dir / ADAPTER_FILES[1]}: {size} bytes; adapters may be at most "
            f"{max_bytes} bytes ({max_bytes / 2**20:g} MiB)"
        )
    return files


def _check_files(adapter_dir: Path) -> None:
    """Exactly the adapter files (and harmless text); pickles and anything else refused."""
    if not adapter_dir.is_dir():
        raise InvalidInput(f"{adapter_dir}: not a directory (a PEFT adapter is a directory)")
    names = sorted(p.name for p in adapter_dir.iterdir())
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise InvalidInput(
            f"{adapter_dir}: pickle files refused; use safetensors ({', '.join(pickles)}: "
            "loading a pickle can run arbitrary code; save with safe_serialization=True)"
        )
    allowed = ADAPTER_FILES + OPTIONAL_FILES
    unexpected = [n for n in names if n not in allowed]
    if unexpected:
        raise InvalidInput(
            f"{adapter_dir}: unexpected file(s) {', '.join(unexpected[:NAMES_SHOWN])}; "
            f"an adapter holds only {', '.join(allowed)}"
        )
    missing = [n for n in ADAPTER_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise InvalidInput(
            f"{adapter_dir}: not a PEFT LoRA adapter (missing {', '.join(missing)}; "
            f"expected {' and '.join(ADAPTER_FILES)})"
        )


def _check_config(adapter_dir: Path, max_rank: int) -> tuple[int, float, Any]:
    """(r, lora_alpha, target_modules) of a plain LoRA config; anything else refused."""
    path = adapter_dir / ADAPTER_FILES[0]
    try:
        config = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{path}: not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidInput(f"{path}: must be a JSON object, not {type(config).__name__}")
    if config.get("peft_type") != "LORA":
        raise InvalidInput(f"{path}: peft_type {config.get('peft_type')!r}; allowed: LORA")
    r = config.get("r")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InvalidInput(f"{path}: r must be a positive integer, not {r!r}")
    if r > max_rank:
        raise InvalidInput(f"{path}: r={r} is over this hub's limit of {max_rank}")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise InvalidInput(f"{path}: lora_alpha must be a finite number, not {alpha!r}")
    init = config.get("init_lora_weights", True)
    if init not in PLAIN_INITS:
        raise InvalidInput(
            f"{path}: init_lora_weights={init!r} changes the base weights, so the adapter does "
            "not fit the original model; convert it to plain LoRA when saving "
            "(path_initial_model_for_weight_conversion) or use one of "
            f"{', '.join(repr(i) for i in PLAIN_INITS)}"
        )
    for key, value in config.items():
        if key in IGNORED_KEYS or _is_off(key, value):
            continue
        why = REFUSED_OPTIONS.get(key, "this hub does not know what it changes")
        raise InvalidInput(
            f"{path}: unsupported option {key}={value!r} ({why}); only plain LoRA is "
            "accepted, merged as ΔW = B·A·lora_alpha/r"
        )
    targets = config.get("target_modules")
    if isinstance(targets, list) and not all(isinstance(t, str) for t in targets):
        raise InvalidInput(f"{path}: target_modules must be module names, not {targets!r}")
    return r, float(alpha), targets


def _is_off(key: str, value: Any) -> bool:
    """Whether an option holds its "feature not used" value."""
    if key == "bias":
        return value == "none"
    return value is None or value is False or value == {} or value == []


def _lora_pairs(
    path: Path, tensors: dict[str, tuple[str, list[int]]]
) -> dict[str, tuple[list[int], list[int]]]:
    """Module path -> (lora_A shape, lora_B shape), each tensor one half of a pair."""
    if not tensors:
        raise InvalidInput(f"{path}: the adapter is empty (no tensors)")
    not_float = sorted(f"{k} ({d})" for k, (d, _) in tensors.items() if d not in FLOAT_DTYPES)
    if not_float:
        raise InvalidInput(
            f"{path}: tensors that are not floating point: {', '.join(not_float[:NAMES_SHOWN])}; "
            f"allowed dtypes: {', '.join(FLOAT_DTYPES)}"
        )
    halves: dict[str, dict[str, list[int]]] = {}
    names: set[str | None] = set()
    strange = []
    for key, (_, shape) in sorted(tensors.items()):
        m = LORA_KEY_RE.match(key)
        if m is None:
            strange.append(key)
            continue
        names.add(m["name"])
        halves.setdefault(m["path"], {})[m["half"]] = shape
    if strange:
        raise InvalidInput(
            f"{path}: tensors that are not LoRA pairs: {', '.join(strange[:NAMES_SHOWN])} "
            f"({len(strange)} in all); allowed names: base_model.model.<module>.lora_A.weight "
            "and .lora_B.weight"
        )
    if len(names) > 1:
        shown = ", ".join(sorted(n or "(none)" for n in names))
        raise InvalidInput(f"{path}: tensors of several adapters ({shown}); save one adapter")
    unpaired = [f"{p}.lora_{'B' if 'A' in h else 'A'}" for p, h in halves.items() if len(h) != 2]
    if unpaired:
        raise InvalidInput(
            f"{path}: missing tensors {', '.join(unpaired[:NAMES_SHOWN])} ({len(unpaired)} in "
            "all); every adapted module needs both lora_A and lora_B"
        )
    return {p: (h["A"], h["B"]) for p, h in halves.items()}


def _check_fit(
    adapter_dir: Path,
    base_dir: Path,
    pairs: dict[str, tuple[list[int], list[int]]],
    rank: int,
) -> list[list[int]]:
    """Refuse modules the base lacks or whose shapes differ; the adapter's tensor shapes."""
    base = base_weight_shapes(base_dir)
    to_base = _key_mapping(list(pairs), base)
    missing = [p for p in pairs if to_base(p) not in base]
    if missing:
        others = missing[1:NAMES_SHOWN]
        raise InvalidInput(
            f"{adapter_dir}: module {missing[0]} does not exist in the base "
            f"({_architecture(base_dir)})"
            + (f"; neither do {', '.join(others)}" if others else "")
            + f" ({len(missing)} of {len(pairs)} adapted modules missing: this adapter was "
            "made for another model)"
        )
    shapes = []
    for p, (a, b) in pairs.items():
        weight = base[to_base(p)]
        if len(weight) != 2:
            raise InvalidInput(
                f"{adapter_dir}: module {p} is not a linear layer in the base (weight shape "
                f"{weight}); LoRA is allowed on 2-D (out, in) weights only"
            )
        out_dim, in_dim = weight
        if a != [rank, in_dim] or b != [out_dim, rank]:
            raise InvalidInput(
                f"{adapter_dir}: module {p}: lora_A is {a} and lora_B is {b}; for the base "
                f"weight {weight} (out, in) with r={rank} they must be {[rank, in_dim]} and "
                f"{[out_dim, rank]}"
            )
        shapes += [a, b]
    return shapes


def _key_mapping(paths: list[str], base: dict[str, list[int]]) -> Callable[[str], str]:
    """The one module-path -> base-key rule that finds most modules (as saved first).

    PEFT names modules as the model holds them (`model.layers.0...`); a checkpoint saved
    from the bare base class lacks the `model.` prefix. One rule serves the whole adapter,
    so a half-matching adapter is not stitched together from two conventions.
    """
    rules: list[Callable[[str], str]] = [
        lambda p: f"{p}.weight",
        lambda p: f"{p.removeprefix('model.')}.weight",
        lambda p: f"model.{p}.weight",
    ]
    return max(rules, key=lambda rule: sum(rule(p) in base for p in paths))


def _architecture(base_dir: Path) -> str:
    """The base's architecture name for messages, from config.json when readable."""
    try:
        config = json.loads((base_dir / "config.json").read_text("utf-8"))
        return str((config.get("architectures") or [config["model_type"]])[0])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        return "unknown architecture"


def _check_targets(path: Path, targets: list[str], paths: list[str]) -> None:
    """Every name in target_modules must match an adapted module, as PEFT matches them."""
    lacking = [t for t in targets if not any(p == t or p.endswith(f".{t}") for p in paths)]
    if lacking:
        raise InvalidInput(
            f"{path}: missing tensors for target module(s) {', '.join(lacking[:NAMES_SHOWN])} "
            "named in adapter_config.json; the file adapts "
            f"{', '.join(sorted({p.rsplit('.', 1)[-1] for p in paths}))}"
        )
