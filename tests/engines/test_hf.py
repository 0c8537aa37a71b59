import json
from pathlib import Path

import pytest

from upstream.engines.base import GenRequest
from upstream.engines.hf import HFEngine, clear_cache, load_model, plan_batches
from upstream.errors import InvalidInput
from upstream.hub import Hub
from upstream.registry import resolve

PROMPTS = [
    "What is the capital of France?",
    "hi",
    "Write a short story about a cat who learns to swim in the sea, with a happy ending.",
    "List three fruits",
    "def add(a, b):",
    "Answer with one word. Red or blue?",
    "Explain why the sky is blue",
    "yes",
    "no",
    "apple banana cherry",
]


@pytest.fixture
def engine(tiny_hub: Hub) -> HFEngine:
    with tiny_hub.session() as s:
        rev = resolve(s, "tiny")
    return HFEngine.for_revision(tiny_hub, rev, batch_size=4)


def test_batched_equals_one_by_one_token_for_token(engine: HFEngine) -> None:
    requests = [GenRequest.from_prompt(p, max_new_tokens=16) for p in PROMPTS]
    batched = engine.generate(requests)  # the lean loop
    single_engine = HFEngine(engine.loaded, batch_size=1)
    single_engine._fastgen = False  # transformers' generate, one request at a time
    single = single_engine.generate(requests)
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert [r.text for r in batched] == [r.text for r in single]
    # results come back in request order, not in the length-sorted batch order
    assert [r.prompt_tokens for r in batched] == [len(engine.encode(q)) for q in requests]


@pytest.mark.parametrize("fast", [True, False])
def test_each_result_is_handed_over_as_it_finishes(engine: HFEngine, fast: bool) -> None:
    engine._fastgen = fast
    # two settings, so the lean loop runs twice and indices must map back to requests
    requests = [GenRequest.from_prompt(p, max_new_tokens=4 + i % 2) for i, p in enumerate(PROMPTS)]
    seen: list[tuple[int, str]] = []
    results = engine.generate(requests, on_result=lambda i, r: seen.append((i, r.text)))
    assert sorted(seen) == sorted(enumerate(r.text for r in results))  # each once, right index
    assert all(
        r.completion_tokens <= q.max_new_tokens for r, q in zip(results, requests, strict=True)
    )


def test_max_new_tokens_and_stop_strings(engine: HFEngine) -> None:
    [full] = engine.generate([GenRequest.from_prompt("hi", max_new_tokens=8)])
    assert full.completion_tokens == 8 and full.finish_reason == "length"
    stop = full.text[2:5]
    assert stop.strip()
    [cut] = engine.generate([GenRequest.from_prompt("hi", max_new_tokens=8, stop=(stop,))])
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop"


def test_stop_strings_in_a_batch_match_one_by_one(engine: HFEngine) -> None:
    prompts = PROMPTS[:6]
    plain = engine.generate([GenRequest.from_prompt(p, max_new_tokens=12) for p in prompts])
    # a stop string taken from one output, so at least that sequence stops early
    stop = plain[0].text[3:6]
    requests = [GenRequest.from_prompt(p, max_new_tokens=12, stop=(stop,)) for p in prompts]
    batched = engine.generate(requests)
    single = HFEngine(engine.loaded, batch_size=1).generate(requests)
    assert [(r.text, r.token_ids) for r in batched] == [(r.text, r.token_ids) for r in single]
    assert batched[0].finish_reason == "stop" and stop not in batched[0].text


def test_mixed_settings_are_batched_separately() -> None:
    reqs = [GenRequest.from_prompt("a", max_new_tokens=n) for n in (4, 8, 4, 8, 4)]
    encoded = [[1, 2], [1], [1, 2, 3], [1, 2, 3, 4], [1]]
    batches = plan_batches(reqs, encoded, batch_size=2)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    for b in batches:
        assert len({reqs[i].max_new_tokens for i in b}) == 1
        assert len(b) <= 2
    # within one setting, shorter prompts come first
    assert batches[0] == [4, 0]


def test_loaded_models_are_cached(tiny_hub: Hub) -> None:
    clear_cache()
    with tiny_hub.session() as s:
        rev = resolve(s, "tiny")
    first = load_model(tiny_hub, rev)
    assert load_model(tiny_hub, rev) is first
    clear_cache()
    assert load_model(tiny_hub, rev) is not first


@pytest.mark.parametrize(
    "request_, message",
    [
        (GenRequest.from_prompt("   "), "prompt is empty"),
        (GenRequest.from_prompt("x" * 40_000), "40000 characters; the limit is 32000"),
        (GenRequest(messages=[{"role": "robot", "content": "hi"}]), "allowed roles"),
        (GenRequest.from_prompt("hi", max_new_tokens=0), "max_new_tokens 0: allowed 1 to 4096"),
        (GenRequest.from_prompt("hi", max_new_tokens=4097), "max_new_tokens 4097: allowed 1 to"),
    ],
)
def test_bad_requests_are_refused(engine: HFEngine, request_: GenRequest, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        engine.generate([request_])


def test_lora_adapter_changes_the_output(
    tiny_hub: Hub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    peft_model.save_pretrained(tmp_path / "adapter")
    with tiny_hub.session() as s:
        rev = resolve(s, "tiny")
    request = [GenRequest.from_prompt("What is the capital of France?", max_new_tokens=10)]
    plain = HFEngine.for_revision(tiny_hub, rev).generate(request)[0]
    adapted_engine = HFEngine.for_revision(tiny_hub, rev, adapters=[tmp_path / "adapter"])
    adapted = adapted_engine.generate(request)[0]
    assert adapted.token_ids != plain.token_ids
    # an adapter for other module names is refused with a message, not a traceback
    wrong = tmp_path / "adapter"
    cfg = json.loads((wrong / "adapter_config.json").read_text())
    cfg["target_modules"] = ["no_such_proj"]
    (wrong / "adapter_config.json").write_text(json.dumps(cfg))
    from upstream.engines.hf import clear_cache

    clear_cache()
    with pytest.raises(InvalidInput, match="does not fit the base LlamaForCausalLM"):
        HFEngine.for_revision(tiny_hub, rev, adapters=[wrong])
    # the base model in the cache was not modified by merging the adapter
    assert HFEngine.for_revision(tiny_hub, rev).generate(request)[0].token_ids == plain.token_ids


def test_the_lean_loop_widens_its_batch_where_the_cache_fits(
    engine: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream.engines import hf

    prompts = [[1] * 40, [1] * 10]
    engine.batch_size = hf.DEFAULT_BATCH_SIZE
    assert engine.fast_rows(prompts, 16) == hf.DEFAULT_BATCH_SIZE  # a tiny model: all fit
    monkeypatch.setattr(hf, "KV_BUDGET_BYTES", 1)
    assert engine.fast_rows(prompts, 16) == hf.BASE_BATCH_SIZE  # never fewer than before
    engine.batch_size = 3
    assert engine.fast_rows(prompts, 16) == 3  # a caller's smaller batch is kept
