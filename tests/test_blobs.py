import errno
import hashlib
import os
from pathlib import Path

import pytest

from upstream.blobs import BlobError, BlobStore
from upstream.errors import NotFound


def test_same_content_is_stored_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 10_000)
    first = store.put_file(src)
    second = store.put_bytes(b"x" * 10_000)
    assert first.sha256 == hashlib.sha256(b"x" * 10_000).hexdigest()
    assert (first.new, second.new) == (True, False)
    assert list(store) == [first.sha256]
    assert store.open(first.sha256, size=10_000).read() == b"x" * 10_000
    assert list(store.tmp.iterdir()) == []


def test_reading_checks_size_and_fsck_finds_corruption(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    good = store.put_bytes(b"good content")
    bad = store.put_bytes(b"will be damaged")
    path = store.path(bad.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(b"will be")  # truncated on disk
    with pytest.raises(BlobError, match="expected 15"):
        store.open(bad.sha256, size=bad.size)
    assert store.verify(good.sha256)
    assert not store.verify(bad.sha256)
    with pytest.raises(NotFound, match="missing"):
        store.open("0" * 64)


def test_full_disk_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BlobStore(tmp_path / "blobs")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(BlobError, match="disk full"):
        store.put_bytes(b"some weights")
    assert list(store.tmp.iterdir()) == []
    assert list(store) == []


def test_reimporting_a_stored_file_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"w" * 100_000)
    store.put_file(src)

    def must_not_write(*args: object, **kwargs: object) -> None:
        raise AssertionError("a stored blob was written again")

    monkeypatch.setattr(store, "put_stream", must_not_write)
    assert store.put_file(src).new is False


def test_stray_files_do_not_break_listing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    blob = store.put_bytes(b"content")
    (store.root / blob.sha256[:2] / ".DS_Store").write_bytes(b"junk")
    assert list(store) == [blob.sha256]


def test_blob_ids_are_validated(tmp_path: Path) -> None:
    with pytest.raises(BlobError, match="not a sha256"):
        BlobStore(tmp_path).path("../../etc/passwd")
