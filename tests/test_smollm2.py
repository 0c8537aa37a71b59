"""The real bundled model: imported from its GGUF, it answers, batched like one by one."""

from pathlib import Path

import pytest

import upstream
from tests.people import person
from upstream.engines.base import GenRequest
from upstream.engines.hf import HFEngine
from upstream.generation import generate_one
from upstream.hub import Hub
from upstream.registry import bundled_gguf_path, default_model_import, import_model, resolve

pytestmark = pytest.mark.smollm2
NAME = "smollm2-135m-instruct"

QUESTIONS = [
    "What is the capital of France?",
    "What is the opposite of hot? Answer with one word.",
    "Name a colour of the sky.",
    "What is 2 + 2?",
    "Write a haiku about rain.",
    "What is the plural of mouse?",
    "Give me three fruits.",
    "Translate 'thank you' into French.",
    "Who wrote Romeo and Juliet?",
    "What is the largest planet in our solar system?",
    "Say hello.",
    "Explain in one sentence what a noun is.",
]


def test_the_hub_imported_the_bundled_model_once(smol_hub: Hub) -> None:
    """`smol_hub` (tests/conftest.py) imports it as `upstream up` does, through a job."""
    assert default_model_import(smol_hub) is None  # nothing left to import
    with smol_hub.session() as s:
        assert resolve(s, NAME).model.name == NAME


def test_bundled_import_is_safetensors_with_tokenizer_and_template(smol_hub: Hub) -> None:
    with smol_hub.session() as s:
        rev = resolve(s, NAME)
    files = rev.manifest["files"]
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert "chat_template.jinja" in files or "tokenizer_config.json" in files
    assert not any(f.endswith((".gguf", ".bin")) for f in files)
    assert 130e6 < rev.num_parameters < 140e6
    assert rev.architecture == "LlamaForCausalLM"
    assert rev.source["kind"] == "bundled" and rev.source["license"] == "apache-2.0"


def test_same_gguf_again_stores_nothing(smol_hub: Hub) -> None:
    blobs = sorted(smol_hub.blobs)
    again = import_model(smol_hub, str(bundled_gguf_path(NAME)), NAME)
    assert (again.new, again.stored_bytes) == (False, 0)
    assert sorted(smol_hub.blobs) == blobs


def test_it_says_paris(smol_hub: Hub) -> None:
    out = generate_one(smol_hub, NAME, GenRequest.from_prompt(QUESTIONS[0], max_new_tokens=30))
    assert "Paris" in out["text"]
    assert out["finish_reason"] == "stop"


def test_batched_equals_one_by_one_on_smollm2(smol_hub: Hub) -> None:
    with smol_hub.session() as s:
        rev = resolve(s, NAME)
    engine = HFEngine.for_revision(smol_hub, rev, batch_size=len(QUESTIONS))
    requests = [GenRequest.from_prompt(q, max_new_tokens=24) for q in QUESTIONS]
    batched = engine.generate(requests)
    single = HFEngine(engine.loaded, batch_size=1).generate(requests)
    mismatched = [
        q for q, b, o in zip(QUESTIONS, batched, single, strict=True) if b.token_ids != o.token_ids
    ]
    assert mismatched == []


def test_loads_from_exported_files_without_network(smol_hub: Hub, tmp_path: Path) -> None:
    """The stored revision is a plain HF directory: transformers loads it on its own."""
    from transformers import AutoTokenizer

    from upstream.registry import materialize

    with smol_hub.session() as s:
        path = materialize(smol_hub, resolve(s, NAME))
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


def test_one_word_failures_reproduce_on_smollm2(smol_hub: Hub) -> None:
    """SmolLM2 answers in full sentences, so "Answer with one word." reports reproduce."""
    from upstream import reports
    from upstream.reproduction import reproduce

    raw = (Path(upstream.__file__).parent / "data" / "one_word_failures.jsonl").read_bytes()
    good, bad = reports.parse_jsonl(raw, default_model=NAME)
    assert len(good) >= 12 and bad == []
    tester = person(smol_hub, "tester", "reporter")
    submission = reports.submit(smol_hub, good, tester, "import")  # its reproduction queued
    ids = [f.id for f in submission.filed]  # already filed by another test: counted again
    results = reproduce(smol_hub, ids)["reports"].values()
    reproduced = [r for r in results if r["result"] == "reproduced"]
    assert len(reproduced) >= 0.75 * len(good), [r["result"] for r in results]
    with smol_hub.session() as s:
        first = reports.get_report(s, ids[0])
        assert "Paris" in (first.observed or "")  # right answer, wrong form


def test_base_passes_its_guard_suite(smol_hub: Hub) -> None:
    """A guard case the base already fails would say nothing about a candidate."""
    from upstream.db.schema import EvalRun
    from upstream.evals import run_eval
    from upstream.guard import GUARD_MAX_NEW_TOKENS, ensure_guard_suite

    suite = ensure_guard_suite(smol_hub, NAME)
    summary = run_eval(smol_hub, NAME, suite, max_new_tokens=GUARD_MAX_NEW_TOKENS)
    with smol_hub.session() as s:
        run = s.get(EvalRun, summary["run"])
        assert run is not None
        failed = [(r.case_id[:12], r.explanation or r.error) for r in run.results if not r.passed]
    overall = summary["metrics"]["all"]
    assert overall["n"] >= 20 and overall["errors"] == 0
    assert overall["rate"] >= 0.9, failed
