"""Prepacked oneDNN linears compute what `nn.Linear` computes, and greedy tokens stay the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engines.test_fastgen import reference
from tests.engines.test_hf import PROMPTS
from tests.tiny_models import FAMILIES, build_model
from upstream.engines import packed
from upstream.engines.base import GenRequest
from upstream.engines.fastgen import greedy_generate
from upstream.engines.hf import HFEngine, load_from_dir, load_weights
from upstream.engines.packed import PackedLinear, pack_linears
from upstream.hub import Hub

pytestmark = pytest.mark.skipif(not packed.available(), reason="this torch has no oneDNN")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 48), (7, 48), (64, 48), (2, 5, 48)])
def test_packed_linear_equals_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(48, 96, bias=bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        want = linear(x)
        got = PackedLinear(linear)(x)
    assert got.shape == want.shape
    # float32 products summed in another order: equal to rounding, not bit for bit
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_model_gives_the_plain_models_tokens(family: str, tmp_path: Path) -> None:
    model_dir = build_model(tmp_path, family)
    plain = load_weights(model_dir).eval()
    linears = sum(type(m) is nn.Linear for m in plain.modules())
    loaded = load_from_dir(model_dir)  # the engine's model: packed
    assert sum(type(m) is PackedLinear for m in loaded.model.modules()) == linears > 0
    assert not any(type(m) is nn.Linear for m in loaded.model.modules())
    tok = loaded.tokenizer
    prompts = [HFEngine(loaded).encode(GenRequest.from_prompt(p)) for p in PROMPTS]
    eos = [tok.eos_token_id]
    want = reference(plain, prompts, 16, eos, tok.pad_token_id)  # transformers, unpacked
    got = greedy_generate(loaded.model, prompts, 16, eos, tok.pad_token_id, batch_size=4)
    assert got == want


def test_pack_linears_leaves_other_dtypes_alone() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8).to(torch.bfloat16))
    assert pack_linears(model) == 1
    assert type(model[0]) is PackedLinear
    assert type(model[1]) is nn.Linear


def test_the_weights_file_is_not_kept_mapped_beside_the_packed_copy(tmp_path: Path) -> None:
    import gc

    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to see the process's mappings")
    model_dir = build_model(tmp_path, "llama")
    loaded = load_from_dir(model_dir)
    gc.collect()
    weights = str((model_dir / "model.safetensors").resolve())
    assert weights not in maps.read_text()
    assert loaded.model is not None


@pytest.mark.skipif(not packed.bf16_supported(), reason="this CPU has no bfloat16 matrix units")
def test_bfloat16_packing_holds_bf16_weights_and_gives_float32_outputs() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    x = torch.randn(5, 64)
    layer = PackedLinear(linear, torch.bfloat16)
    assert layer.packed.dtype == torch.bfloat16
    with torch.inference_mode():
        y = layer(x)
        want = linear(x)
    assert y.dtype == torch.float32
    assert not torch.equal(y, want)  # bfloat16 precision, not float32's
    assert torch.allclose(y, want, atol=0.1, rtol=0.05)


def test_the_bf16_setting_makes_outputs_of_their_own(tiny_hub: Hub) -> None:
    from upstream import suites
    from upstream.evals import run_eval

    check = {"type": "max_words", "value": 1000}
    cases = [suites.CaseIn([{"role": "user", "content": p}], check, []) for p in PROMPTS[:4]]
    suites.add_cases(tiny_hub, "s", cases, "tiny")
    plain = run_eval(tiny_hub, "tiny", "s", max_new_tokens=4)
    assert plain["metrics"]["all"]["n"] == 4
    bf16_hub = Hub.open(tiny_hub.settings.home, bf16_products=True)
    try:
        other = run_eval(bf16_hub, "tiny", "s", max_new_tokens=4)
    finally:
        bf16_hub.close()
    if packed.bf16_supported():  # cached apart: generated again, under another engine name
        assert other["subject_hash"] != plain["subject_hash"] and other["generated"] == 4
    else:  # the setting does nothing without the units: the float32 outputs are reused
        assert other["subject_hash"] == plain["subject_hash"] and other["generated"] == 0
