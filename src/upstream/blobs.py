"""A content-addressed blob store: each file is kept once, under its sha256.

Writes go to a temporary file in the store, are fsynced, and only then renamed to
their hash, so a crash or a full disk never leaves a half-written blob under a real
name. Readers check the size on every open; `fsck` re-hashes everything.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from upstream.errors import NotFound, UpstreamError

CHUNK = 4 * 1024 * 1024  # bytes read per step while hashing


def sha256_file(path: Path, progress: Callable[[int], object] | None = None) -> str:
    """The sha256 hex digest of a file; `progress` gets the bytes read so far."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done)
    return digest.hexdigest()


class BlobError(UpstreamError):
    """A blob is missing, truncated, or does not match its hash."""


@dataclass(frozen=True)
class StoredBlob:
    sha256: str
    size: int
    new: bool  # False when the same content was already stored


class BlobStore:
    def __init__(self, root: Path):
        self.root = root
        self.tmp = root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BlobError(f"blob id {sha256!r} is not a sha256 hex digest")
        return self.root / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def put_file(self, source: Path, progress: Callable[[int], None] | None = None) -> StoredBlob:
        """Store the content of `source`; `progress` is called with bytes done so far.

        The file is hashed first and copied only when the store lacks it, so a re-import
        of large weights reads them once and writes nothing.
        """
        size = source.stat().st_size
        sha = sha256_file(source, lambda n: progress(n // 2) if progress else None)
        if self.exists(sha) and self.path(sha).stat().st_size == size:
            if progress:
                progress(size)
            return StoredBlob(sha, size, new=False)
        with open(source, "rb") as f:
            return self.put_stream(f, lambda n: progress(size // 2 + n // 2) if progress else None)

    def put_bytes(self, data: bytes) -> StoredBlob:
        sha = hashlib.sha256(data).hexdigest()
        if self.exists(sha):
            return StoredBlob(sha, len(data), new=False)
        return self._write(lambda out: out.write(data), expected=sha)

    def put_stream(
        self, stream: BinaryIO, progress: Callable[[int], None] | None = None
    ) -> StoredBlob:
        digest = hashlib.sha256()

        def copy(out: BinaryIO) -> None:
            done = 0
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done)

        return self._write(copy, digest=digest)

    def _write(
        self,
        fill: Callable[[BinaryIO], object],
        expected: str | None = None,
        digest: hashlib._Hash | None = None,
    ) -> StoredBlob:
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="incoming-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                fill(out)
                out.flush()
                os.fsync(out.fileno())
            sha = expected or (digest.hexdigest() if digest else "")
            size = tmp.stat().st_size
            final = self.path(sha)
            if final.exists() and final.stat().st_size == size:
                tmp.unlink()
                return StoredBlob(sha, size, new=False)
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp, final)
            os.chmod(final, 0o444)
            return StoredBlob(sha, size, new=True)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise BlobError(
                    f"disk full while writing a blob under {self.root}; nothing was stored. "
                    "Free some space and try again."
                ) from e
            raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def open(self, sha256: str, size: int | None = None) -> BinaryIO:
        """Open a blob for reading, checking that it exists and has the recorded size."""
        return open(self.checked_path(sha256, size), "rb")

    def checked_path(self, sha256: str, size: int | None = None) -> Path:
        path = self.path(sha256)
        if not path.exists():
            raise NotFound(f"blob {sha256[:12]} is missing from {self.root}; run `upstream fsck`")
        if size is not None and path.stat().st_size != size:
            raise BlobError(
                f"blob {sha256[:12]} has {path.stat().st_size} bytes, expected {size}: "
                "the store is damaged; run `upstream fsck`"
            )
        return path

    def link_to(self, sha256: str, dest: Path, size: int | None = None) -> None:
        """Make the blob appear at `dest` (a hard link, or a copy across file systems)."""
        src = self.checked_path(sha256, size)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.unlink(missing_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def __iter__(self) -> Iterator[str]:
        """Every stored blob id; stray files that are not named by a hash are skipped."""
        for sub in sorted(self.root.iterdir()):
            if len(sub.name) == 2 and sub.is_dir():
                for f in sorted(sub.iterdir()):
                    name = sub.name + f.name
                    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
                        yield name

    def verify(self, sha256: str) -> bool:
        """Re-hash one blob; True when its content matches its name."""
        return sha256_file(self.path(sha256)) == sha256

    def clean_tmp(self, older_than: float = 3600.0) -> int:
        """Remove leftovers of interrupted writes older than `older_than` seconds.

        Younger files may belong to a write in progress in another process.
        """
        removed = 0
        cutoff = time.time() - older_than
        for f in self.tmp.iterdir():
            if f.stat().st_mtime < cutoff:
                f.unlink(missing_ok=True)
                removed += 1
        return removed
