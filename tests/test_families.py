"""The open model families people build on: each imports and generates."""

import json
from pathlib import Path

import pytest

from tests.tiny_models import FAMILIES, build_model
from upstream.engines.base import GenRequest
from upstream.engines.hf import HFEngine, clear_cache
from upstream.hub import Hub
from upstream.registry import import_model, resolve

PROMPTS = ["What is the capital of France?", "hi", "Write a short story about a cat who swims"]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_imports_and_generates_batched_like_one_by_one(
    hub: Hub, tmp_path: Path, family: str
) -> None:
    model_dir = build_model(tmp_path / family, family)
    result = import_model(hub, str(model_dir), family.replace("_", "-"))
    assert result.new
    with hub.session() as s:
        rev = resolve(s, family.replace("_", "-"))
    clear_cache()
    engine = HFEngine.for_revision(hub, rev, batch_size=8)
    requests = [GenRequest.from_prompt(p, max_new_tokens=12) for p in PROMPTS]
    batched = engine.generate(requests)
    single = HFEngine(engine.loaded, batch_size=1).generate(requests)
    assert [r.token_ids for r in batched] == [r.token_ids for r in single]
    assert all(r.completion_tokens > 0 for r in batched)
    config = json.loads((model_dir / "config.json").read_text())
    assert rev.architecture == config["architectures"][0]
