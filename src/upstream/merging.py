"""Merging accepted LoRA adapters into a base model, streamed tensor by tensor.

A LoRA adapter i changes a base Linear weight W (out, in) by its exact delta
ΔW_i = B_i·A_i·(alpha_i/r_i), with lora_B (out, r) and lora_A (r, in), computed in
float32. A and B are never averaged across adapters: the mean of the A's times the mean
of the B's is not the mean of the products. The methods combine one tensor's deltas:

- `linear` (task arithmetic): W' = W + Σ w_i·ΔW_i.
- `ties` (TIES-merging, Yadav et al. 2023): trim each ΔW_i to its `density` largest
  magnitudes (δ_i), elect a sign per entry (the sign of Σ δ_i, or of the count of signs
  with majority_sign_method="frequency"; zero counts as +), and add the mean of the
  entries that agree with it, each times its weight: W' = W + Σ w_i·δ_i·m_i / max(1, Σ m_i).
  These are the semantics of `peft.utils.merge_utils.ties`: the sign is elected on the
  unweighted deltas and weights scale rather than normalise, so one adapter with weight w
  at density 1 gives W + w·ΔW, as `linear` does. (mergekit's ties elects on weighted
  deltas and divides by Σ w_i·m_i; with every weight 1 the two agree.)
- `dare_ties` (DARE, Yu et al. 2023, then TIES' election): drop each entry of ΔW_i with
  probability 1 - density, scale the survivors by 1/density, then elect and merge as ties.
  Each (tensor, adapter) pair draws its mask from a `torch.Generator` seeded from
  (seed, tensor name, adapter position), so the output depends on the inputs and the seed
  only, not on the order of work. The default density is 0.5 for both (half of each delta
  kept); a release records the value it used.

The kernels are written here rather than taken from `peft.utils.merge_utils`, which the
tests use as the reference: PEFT's functions stack the deltas (a copy) and build sign,
mask and weighted tensors as big again (about five tensors per adapter), trim with a
`topk` over the whole tensor (25x slower than the bracketed partition used here), and
drop entries with the global RNG, which a merge cannot seed without touching global state.
Boolean masks are numpy arrays over the same memory, because torch's boolean kernels
were 5-10x slower here.

Memory. The merged model has exactly the base's tensor names, dtypes and shapes, so the
output shards are planned from the base's headers before any data is read, and each shard
is written header first and then filled in order; no shard is held in memory. A tensor no
adapter touches is copied file to file by the kernel (`copy_file_range`) and never enters
this process. A touched tensor is read with plain reads (mmap'ed pages would count against
the process) into a workspace of buffers sized once for the largest adapted tensor: for
`linear` the base tensor and one delta at a time; for `ties`/`dare_ties` one delta per
adapter plus scratch, vote, sum and count buffers and two boolean masks. The working memory
is therefore fixed when the merge starts, about (adapters + 5) x the largest adapted tensor
in float32 for ties (2x for linear), plus one A and one B at a time, whatever the model's
size. The kernels run on one thread (see `KERNEL_THREADS`).

Output: `model.safetensors`, or `model-0000i-of-0000N.safetensors` shards of at most
`max_shard_bytes` (a larger single tensor gets a shard of its own) with the standard
`model.safetensors.index.json`. Everything is written into a hidden staging directory
beside `out_dir`, which is renamed to `out_dir` when complete (a merge that fails removes
it; one that was killed leaves it, and the next merge to `out_dir` removes it), so
`out_dir` is either absent, empty or complete. The base's other files (config, generation
config, tokenizer, chat template...) are copied unchanged, so tied embeddings stay tied:
no `lm_head.weight` is written when the base has none, and a delta on an `lm_head.weight`
that the config ties to the embeddings is refused (loading would drop it).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import numbers
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upstream.adapters import (
    ADAPTER_FILES,
    DTYPE_BYTES,
    LORA_KEY_RE,
    AdapterInfo,
    _key_mapping,
    read_safetensors_header,
    validate_adapter,
)
from upstream.errors import InvalidInput
from upstream.weights import PICKLE_SUFFIXES, weight_files

if TYPE_CHECKING:
    import numpy as np
    import torch

METHODS = ("linear", "ties", "dare_ties")
SIGN_METHODS = ("total", "frequency")  # as in peft.utils.merge_utils
DEFAULT_DENSITY = 0.5  # ties / dare_ties: fraction of each delta kept
DEFAULT_SEED = 0  # dare_ties
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
STAGING_SUFFIX = ".merging-"  # `.<out_dir name>.merging-*`: where a merge writes first
COPY_CHUNK = 16 * 2**20  # bytes per step when the kernel cannot copy file to file
# Half-width of the bracket around a sampled TIES threshold, in units of 1/sqrt(sample):
# at least 8 standard errors of the sample quantile, so it practically never misses.
BRACKET_SE = 4.0
# The kernels are passes over a few MB each, bound by memory, not arithmetic. With torch's
# two threads on this 2-core machine each pass had to wait for the second core whenever
# anything else ran (8 ms instead of 0.08 ms per pass at load 4); on one it does not.
KERNEL_THREADS = 1
FLOAT_TYPES = ("F16", "BF16", "F32", "F64")  # base dtypes a delta can be added to


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class MergeParams:
    """A checked merge recipe: method, one weight per adapter, and its method's knobs."""

    method: str
    weights: tuple[float, ...]  # one per adapter, in adapter order
    density: float | None = None  # ties / dare_ties: fraction of each delta kept
    seed: int | None = None  # dare_ties: seeds the random drop
    majority_sign_method: str = "total"  # ties / dare_ties: "total" or "frequency"

    def as_dict(self) -> dict[str, Any]:
        """The recipe as JSON for the release record."""
        return {**asdict(self), "weights": list(self.weights)}


def check_params(
    method: str,
    n_adapters: int,
    weights: Sequence[float] | None = None,
    density: float | None = None,
    seed: int | None = None,
    majority_sign_method: str = "total",
) -> MergeParams:
    """Checked merge parameters with defaults filled in; bad values refused by name."""
    if method not in METHODS:
        raise InvalidInput(f"merge method {method!r} is unknown; allowed: {', '.join(METHODS)}")
    if n_adapters < 1:
        raise InvalidInput("a merge needs at least one adapter; none were given")
    checked = _check_weights(n_adapters, weights)
    if majority_sign_method not in SIGN_METHODS:
        raise InvalidInput(
            f"majority_sign_method {majority_sign_method!r} is unknown; allowed: "
            f"{', '.join(SIGN_METHODS)}"
        )
    if method == "linear":
        if density is not None:
            raise InvalidInput(
                f"density={density!r} given for linear, which adds every delta whole; "
                "density applies to ties and dare_ties only"
            )
        if seed is not None:
            raise InvalidInput(
                f"seed={seed!r} given for linear, which draws nothing at random; "
                "seed applies to dare_ties only"
            )
        return MergeParams(method, checked)
    density = DEFAULT_DENSITY if density is None else density
    if not isinstance(density, numbers.Real) or isinstance(density, bool) or not 0 < density <= 1:
        raise InvalidInput(
            f"density={density!r} is outside (0, 1]; it is the fraction of each delta kept "
            f"(default {DEFAULT_DENSITY})"
        )
    if method == "ties":
        if seed is not None:
            raise InvalidInput(
                f"seed={seed!r} given for ties, which draws nothing at random; "
                "seed applies to dare_ties only"
            )
    else:
        seed = DEFAULT_SEED if seed is None else seed
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InvalidInput(f"seed={seed!r} must be a non-negative integer")
    return MergeParams(method, checked, float(density), seed, majority_sign_method)


def _check_weights(n_adapters: int, weights: Sequence[float] | None) -> tuple[float, ...]:
    """One finite number per adapter; 1.0 each when not given."""
    if weights is None:
        return (1.0,) * n_adapters
    weights = list(weights)
    if len(weights) != n_adapters:
        raise InvalidInput(
            f"{len(weights)} weight(s) given for {n_adapters} adapter(s); give one weight "
            "per adapter, in the same order"
        )
    for i, w in enumerate(weights):
        if not isinstance(w, numbers.Real) or isinstance(w, bool) or not math.isfinite(w):
            raise InvalidInput(f"weight {i + 1} is {w!r}; weights must be finite numbers")
    return tuple(float(w) for w in weights)


def preflight(
    base_dir: Path,
    adapter_dirs: Sequence[Path],
    max_rank: int = sys.maxsize,
    max_bytes: int = sys.maxsize,
) -> list[AdapterInfo]:
    """Check every adapter against the base from headers only, before any heavy work.

    Size limits are off by default: adapters reach a merge after the hub admitted them
    under its own limits; what must hold here is that each one fits this base.
    """
    return [
        validate_adapter(Path(d), Path(base_dir), max_rank=max_rank, max_bytes=max_bytes)
        for d in adapter_dirs
    ]


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Tensor:
    """Where one tensor's bytes lie in a safetensors file."""

    name: str
    dtype: str  # safetensors dtype, e.g. "BF16"
    shape: list[int]
    file: Path
    start: int  # absolute byte offset of its data in `file`
    nbytes: int


def _tensors_of(path: Path) -> list[_Tensor]:
    """Where each tensor of a safetensors file lies, in data order (header checked)."""
    header = read_safetensors_header(path)  # checks dtypes, shapes and offsets
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        entries = json.loads(f.read(header_len))
    tensors = []
    for name, (dtype, shape) in header.items():
        begin, end = entries[name]["data_offsets"]
        tensors.append(_Tensor(name, dtype, shape, path, 8 + header_len + begin, end - begin))
    return sorted(tensors, key=lambda t: t.start)


def _base_tensors(base_dir: Path) -> list[_Tensor]:
    """Every tensor of the base's safetensors files, file by file in data order."""
    files = weight_files(base_dir)
    if not files:
        raise InvalidInput(f"{base_dir}: no weights found (expected *.safetensors files)")
    tensors: list[_Tensor] = []
    seen: dict[str, str] = {}
    for path in files:
        for t in _tensors_of(path):
            if t.name in seen:
                raise InvalidInput(
                    f"{base_dir}: tensor {t.name} is in both {seen[t.name]} and {path.name}"
                )
            seen[t.name] = path.name
            tensors.append(t)
    return tensors


def _read(f: io.BufferedReader, t: _Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    """One tensor read with plain reads into memory this process owns (`into`: bytes).

    Not mmap: mapped pages that were touched count against the process until the file
    is closed, so a streamed merge would look as big as the files it read.
    """
    import torch

    raw = torch.empty(t.nbytes, dtype=torch.uint8) if into is None else into[: t.nbytes]
    view = raw.numpy().data
    f.seek(t.start)
    done = 0
    while done < t.nbytes:
        n = f.readinto(view[done:])
        if not n:
            raise InvalidInput(f"{t.file}: truncated while reading tensor {t.name}")
        done += n
    return raw.view(_torch_dtype(t.dtype)).reshape(t.shape)


@dataclass
class _Adapter:
    """An adapter file: its ΔW scale and base key -> (lora_A, lora_B) locations."""

    path: Path
    scale: float
    pairs: dict[str, tuple[_Tensor, _Tensor]]
    file: io.BufferedReader | None = None  # open while merging

    def delta_into(self, base_key: str, out: torch.Tensor) -> torch.Tensor:
        """This adapter's exact ΔW = B·A·alpha/r for one base weight, written into `out`."""
        import torch

        assert self.file is not None, "adapter file not open"
        a_loc, b_loc = self.pairs[base_key]
        a = _read(self.file, a_loc).to(out.dtype)  # (r, in)
        b = _read(self.file, b_loc).to(out.dtype)  # (out, r)
        return torch.mm(b, a, out=out).mul_(self.scale)  # (out, in), PEFT's order


def _adapter(adapter_dir: Path, info: AdapterInfo, shapes: dict[str, list[int]]) -> _Adapter:
    """An adapter checked by `preflight`, its modules mapped to base keys (headers only)."""
    path = adapter_dir / ADAPTER_FILES[1]
    halves: dict[str, dict[str, _Tensor]] = {}
    for t in _tensors_of(path):
        m = LORA_KEY_RE.match(t.name)
        if m is not None:  # preflight refused any other name
            halves.setdefault(m["path"], {})[m["half"]] = t
    to_base = _key_mapping(list(halves), shapes)  # the rule validate_adapter used
    pairs = {to_base(p): (h["A"], h["B"]) for p, h in halves.items()}
    return _Adapter(path, info.scale, pairs)


# ---------------------------------------------------------------- kernels


class _Workspace:
    """Buffers reused for every adapted tensor, each sized once for the largest.

    The merge's working memory is thus fixed when it starts, and pages are not faulted in
    afresh for every tensor: on the development machine, filling a new 80 MB tensor took
    32 ms (page faults) against 3 ms for reusing one.
    """

    def __init__(self, numel: int, nbytes: int) -> None:
        """Room for tensors of up to `numel` elements and base tensors of `nbytes` bytes."""
        import torch

        self.numel = numel
        self.raw = torch.empty(nbytes, dtype=torch.uint8)  # one base tensor's bytes
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, slot: str, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """The buffer named `slot` (made on first use), viewed with `shape`."""
        import torch

        buf = self._buffers.get((slot, dtype))
        if buf is None:
            buf = self._buffers[(slot, dtype)] = torch.empty(self.numel, dtype=dtype)
        return buf[: math.prod(shape)].view(*shape)

    def mask(self, slot: str, shape: Sequence[int]) -> np.ndarray:
        """A boolean buffer as a numpy array (numpy's boolean kernels are 5-10x faster
        than torch's here: 0.05 against 0.4-0.6 ms for a comparison over 884k values)."""
        import torch

        return self.get(slot, shape, torch.bool).numpy()


def _kth_largest(a: np.ndarray, k: int, ws: _Workspace) -> float:
    """The k-th largest of the 1-D array `a`, exactly, by partial sorts (`a` is unchanged).

    A strided sample brackets where the answer lies; only the values inside the bracket
    (a few % of them) are partitioned, and all of them if the bracket missed. For a
    (1536, 576) LoRA delta on one thread: 1.9 ms, against 9.6 ms for a full partition,
    12 ms for torch's kthvalue and 49 ms for PEFT's topk-based trim.
    """
    import numpy as np

    n = a.size
    # Partitioning the sample costs ~m, the bracket ~8n/sqrt(m): least when m ~ (8n)^(2/3).
    sample = a[:: max(1, n // max(1024, int((8 * n) ** (2 / 3))))].copy()
    m = sample.size
    bracket = BRACKET_SE / math.sqrt(m)  # in quantile terms
    q = 1 - k / n  # the answer's quantile
    lo_i = max(0, math.floor((q - bracket) * m))
    hi_i = min(m - 1, math.ceil((q + bracket) * m))
    sample.partition([lo_i, hi_i])
    lo, hi = sample[lo_i], sample[hi_i]
    mask, other = ws.mask("mask0", [n]), ws.mask("mask1", [n])
    above = int(np.count_nonzero(np.greater(a, hi, out=mask)))
    if above < k:
        np.greater_equal(a, lo, out=mask)
        candidates = a[np.logical_and(mask, np.less_equal(a, hi, out=other), out=mask)]
        j = k - above  # the answer is the j-th largest candidate
        if j <= candidates.size:
            candidates.partition(candidates.size - j)
            return float(candidates[candidates.size - j])
    everything = a.copy()
    everything.partition(n - k)
    return float(everything[n - k])


def _keep_largest(delta: torch.Tensor, density: float, ws: _Workspace) -> torch.Tensor:
    """TIES trim: zero all but the int(density·n) largest magnitudes of `delta`, in place.

    Entries equal to the threshold are all kept, so exact ties may keep a few more
    (PEFT's topk keeps exactly k; for continuous deltas they are the same entries).
    """
    if density >= 1:
        return delta
    k = int(density * delta.numel())
    if k == 0:
        return delta.zero_()
    import numpy as np

    d = delta.numpy().reshape(-1)
    magnitudes = np.abs(d, out=ws.get("scratch", [d.size], delta.dtype).numpy())
    keep = np.greater_equal(
        magnitudes, _kth_largest(magnitudes, k, ws), out=ws.mask("mask0", [d.size])
    )
    np.multiply(d, keep, out=d)
    return delta


def _drop_random(
    delta: torch.Tensor, density: float, generator: torch.Generator, ws: _Workspace
) -> torch.Tensor:
    """DARE: keep each entry with probability `density`, rescaled by 1/density, in place.

    Drawn as uniform < density: the same law as `bernoulli_(density)`, which was 4x slower.
    """
    import numpy as np

    if density >= 1:
        return delta
    uniform = ws.get("scratch", delta.shape, delta.dtype).uniform_(generator=generator)
    x = delta.numpy()
    np.multiply(x, np.less(uniform.numpy(), density, out=ws.mask("mask0", delta.shape)), out=x)
    x /= density
    return delta


def _generator(seed: int, tensor: str, adapter: int) -> torch.Generator:
    """A generator for one (tensor, adapter) pair, independent of the order of work."""
    import torch

    digest = hashlib.sha256(f"{seed}\0{tensor}\0{adapter}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _elect_and_merge(
    deltas: list[torch.Tensor], weights: list[float], sign_method: str, ws: _Workspace
) -> torch.Tensor:
    """TIES: Σ w_i·δ_i·m_i / max(1, Σ m_i), m_i where δ_i has the elected sign.

    The deltas are changed in place (masked).
    """
    import numpy as np

    shape, dtype = deltas[0].shape, deltas[0].dtype
    scratch = ws.get("scratch", shape, dtype).numpy()
    votes = ws.get("votes", shape, dtype).numpy()
    votes.fill(0)
    for delta in deltas:
        x = delta.numpy()
        votes += x if sign_method == "total" else np.sign(x, out=scratch)
    # The elected sign as +1 or -1; a tie (0) goes to +, as in PEFT.
    elected = np.multiply(np.greater_equal(votes, 0, out=ws.mask("mask0", shape)), 2.0, out=votes)
    elected -= 1
    mixed = ws.get("mixed", shape, dtype).numpy()
    count = ws.get("count", shape, dtype).numpy()
    mixed.fill(0)
    count.fill(0)
    agrees = ws.mask("mask1", shape)
    for delta, w in zip(deltas, weights, strict=True):
        x = delta.numpy()
        np.greater(np.multiply(x, elected, out=scratch), 0, out=agrees)  # never true for 0
        np.multiply(x, agrees, out=x)
        if w != 1:
            x *= w
        mixed += x
        count += agrees
    np.maximum(count, 1, out=count)
    mixed /= count
    return ws.get("mixed", shape, dtype)


def _merge_tensor(
    base: torch.Tensor,
    name: str,
    users: list[tuple[int, _Adapter]],
    params: MergeParams,
    ws: _Workspace,
) -> None:
    """Add the combined deltas of `users` (position, adapter) to one base tensor, in place.

    The sum is computed in float32 (float64 for a float64 base) and rounded once.
    """
    import torch

    compute = torch.promote_types(base.dtype, torch.float32)
    merged = base if base.dtype == compute else ws.get("merged", base.shape, compute)
    if merged is not base:
        merged.copy_(base)
    if params.method == "linear":
        delta = ws.get("delta", base.shape, compute)
        for i, adapter in users:
            merged.add_(adapter.delta_into(name, delta), alpha=params.weights[i])
    else:
        density = params.density if params.density is not None else DEFAULT_DENSITY
        seed = params.seed if params.seed is not None else DEFAULT_SEED
        deltas = []
        for slot, (i, adapter) in enumerate(users):
            d = adapter.delta_into(name, ws.get(f"delta{slot}", base.shape, compute))
            if params.method == "ties":
                deltas.append(_keep_largest(d, density, ws))
            else:
                deltas.append(_drop_random(d, density, _generator(seed, name, i), ws))
        weights = [params.weights[i] for i, _ in users]
        merged.add_(_elect_and_merge(deltas, weights, params.majority_sign_method, ws))
    if merged is not base:
        base.copy_(merged)  # rounded to the base's dtype


# ---------------------------------------------------------------- output


def _plan_shards(tensors: list[_Tensor], max_shard_bytes: int) -> list[list[_Tensor]]:
    """Consecutive tensors grouped into shards of at most `max_shard_bytes` of data."""
    shards: list[list[_Tensor]] = []
    current: list[_Tensor] = []
    size = 0
    for t in tensors:
        if current and size + t.nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += t.nbytes
    if current:
        shards.append(current)
    # Widest dtypes first keeps every tensor aligned to its element size (the header is
    # padded to 8 bytes), as safetensors' own writer does.
    return [sorted(s, key=lambda t: -DTYPE_BYTES.get(t.dtype, 1)) for s in shards]


def _shard_names(n: int) -> list[str]:
    """transformers' names for n shards (one shard: the single-file name)."""
    if n == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _header(shard: list[_Tensor]) -> bytes:
    """A safetensors header for `shard`, data in list order, padded to 8 bytes."""
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in shard:
        entries[t.name] = {
            "dtype": t.dtype,
            "shape": t.shape,
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


def _write_all(out: io.FileIO, data: memoryview) -> None:
    """Write all of `data` (a raw file may write less than asked)."""
    done = 0
    while done < len(data):
        done += out.write(data[done:]) or 0


def _copy_bytes(src: io.BufferedReader, t: _Tensor, out: io.FileIO) -> None:
    """Copy one tensor's bytes from a base file to `out` at its position, file to file."""
    offset, left = t.start, t.nbytes
    try:
        while left:
            n = os.copy_file_range(src.fileno(), out.fileno(), left, offset)
            if n == 0:
                raise InvalidInput(f"{t.file}: truncated while copying tensor {t.name}")
            offset, left = offset + n, left - n
        return
    except OSError as e:  # a file system or kernel without it: copy through memory
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while left:
        chunk = os.pread(src.fileno(), min(COPY_CHUNK, left), offset)
        if not chunk:
            raise InvalidInput(f"{t.file}: truncated while copying tensor {t.name}")
        _write_all(out, memoryview(chunk))
        offset, left = offset + len(chunk), left - len(chunk)


def _staging_dir(out_dir: Path) -> Path:
    """A new hidden directory beside `out_dir` to write into; refused if `out_dir` holds files.

    Staging directories left by a merge that was killed are removed first.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        shown = sorted(p.name for p in out_dir.iterdir())[:5] if out_dir.is_dir() else []
        raise InvalidInput(
            f"{out_dir}: not an empty directory ({', '.join(shown) or 'a file'}); merge into a "
            "new or empty directory"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out_dir.name}{STAGING_SUFFIX}"
    for stale in out_dir.parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=prefix))


def _copy_other_files(base_dir: Path, out_dir: Path) -> None:
    """The base's non-weight files (config, tokenizer, templates...) copied unchanged."""
    for path in sorted(base_dir.rglob("*")):
        rel = path.relative_to(base_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix == ".safetensors" or path.name == INDEX_FILE:
            continue
        if path.name.lower().endswith(PICKLE_SUFFIXES):
            continue  # never carried into a release
        dest = out_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)  # content only: blob-store links are read-only


# ---------------------------------------------------------------- merge


@dataclass
class MergeResult:
    """What a merge wrote, for the release record."""

    method: str
    params: dict[str, Any]
    tensors: int  # tensors written
    changed: int  # tensors that received at least one delta
    shards: list[str]  # weight file names in out_dir
    seconds: float  # wall seconds

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON for the release record."""
        return asdict(self)


def merge(
    base_dir: Path,
    adapter_dirs: Sequence[Path],
    params: MergeParams,
    out_dir: Path,
    progress: Callable[[float, float, str], None] | None = None,
    max_shard_bytes: int = 2 * 2**30,
) -> MergeResult:
    """Write base + the adapters' combined deltas to `out_dir` as safetensors shards."""

    started = time.monotonic()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    params = check_params(
        params.method,
        len(adapter_dirs),
        params.weights,
        params.density,
        params.seed,
        params.majority_sign_method,
    )
    if max_shard_bytes < 1:
        raise InvalidInput(f"max_shard_bytes={max_shard_bytes} must be a positive number of bytes")
    infos = preflight(base_dir, adapter_dirs)
    tensors = _base_tensors(base_dir)
    shapes = {t.name: t.shape for t in tensors}
    adapters = [_adapter(Path(d), i, shapes) for d, i in zip(adapter_dirs, infos, strict=True)]
    touched: dict[str, list[tuple[int, _Adapter]]] = {}
    for i, adapter in enumerate(adapters):
        for key in adapter.pairs:
            touched.setdefault(key, []).append((i, adapter))
    _check_touched(base_dir, tensors, touched)
    shards = _plan_shards(tensors, max_shard_bytes)
    names = _shard_names(len(shards))
    staging = _staging_dir(out_dir)
    try:
        _copy_other_files(base_dir, staging)
        _write_shards(tensors, touched, params, shards, names, staging, progress)
        if len(shards) > 1:
            weight_map = {t.name: n for s, n in zip(shards, names, strict=True) for t in s}
            index = {
                "metadata": {"total_size": sum(t.nbytes for t in tensors)},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", "utf-8")
        os.replace(staging, out_dir)  # replaces an empty out_dir
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return MergeResult(
        method=params.method,
        params=params.as_dict(),
        tensors=len(tensors),
        changed=len(touched),
        shards=names,
        seconds=round(time.monotonic() - started, 3),
    )


def _write_shards(
    tensors: list[_Tensor],
    touched: dict[str, list[tuple[int, _Adapter]]],
    params: MergeParams,
    shards: list[list[_Tensor]],
    names: list[str],
    out_dir: Path,
    progress: Callable[[float, float, str], None] | None,
) -> None:
    """Stream every tensor into its shard: copied through, or merged in the workspace."""
    import torch

    report = progress or (lambda done, total, message: None)
    adapted = [t for t in tensors if t.name in touched]
    ws = _Workspace(
        max((math.prod(t.shape) for t in adapted), default=0),
        max((t.nbytes for t in adapted), default=0),
    )
    threads = torch.get_num_threads()
    with ExitStack() as stack, torch.inference_mode():
        torch.set_num_threads(KERNEL_THREADS)
        stack.callback(torch.set_num_threads, threads)
        sources = {p: stack.enter_context(open(p, "rb")) for p in {t.file for t in tensors}}
        for users in touched.values():
            for _, adapter in users:
                if adapter.file is None:
                    adapter.file = stack.enter_context(open(adapter.path, "rb"))
        done = 0
        report(done, len(tensors), "merging")
        for shard, name in zip(shards, names, strict=True):
            with open(out_dir / name, "wb", buffering=0) as out:
                _write_all(out, memoryview(_header(shard)))
                for t in shard:
                    if t.name in touched:
                        base = _read(sources[t.file], t, into=ws.raw)
                        _merge_tensor(base, t.name, touched[t.name], params, ws)
                        _write_all(out, ws.raw[: t.nbytes].numpy().data)
                    else:
                        _copy_bytes(sources[t.file], t, out)
                    done += 1
                    report(done, len(tensors), "merging")


def _check_touched(
    base_dir: Path, tensors: list[_Tensor], touched: dict[str, list[tuple[int, _Adapter]]]
) -> None:
    """Refuse deltas on weights that are not float or that loading would replace."""
    not_float = sorted(t.name for t in tensors if t.name in touched and t.dtype not in FLOAT_TYPES)
    if not_float:
        raise InvalidInput(
            f"{base_dir}: adapted weight {not_float[0]} is not floating point; "
            f"deltas can be added to {', '.join(FLOAT_TYPES)} weights only"
        )
    try:
        config = json.loads((base_dir / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(config, dict) and config.get("tie_word_embeddings") is True:
        tied = [k for k in touched if k.endswith("lm_head.weight")]
        if tied:
            raise InvalidInput(
                f"{base_dir}: the base ties {tied[0]} to its input embeddings "
                "(tie_word_embeddings), so a delta on it would be dropped when the model "
                "loads; train the adapter without lm_head"
            )


def _torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors float dtype name (one of FLOAT_TYPES)."""
    import torch

    return {
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "F32": torch.float32,
        "F64": torch.float64,
    }[name]
