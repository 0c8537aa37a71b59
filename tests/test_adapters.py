"""Adapter validation: real PEFT adapters of the tiny models, then each way one goes wrong."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import build_model
from upstream.adapters import (
    AdapterInfo,
    base_weight_shapes,
    read_safetensors_header,
    validate_adapter,
)
from upstream.errors import InvalidInput

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"  # a module the good adapter adapts


def make_adapter(base_dir: Path, out_dir: Path, targets: list[str]) -> Path:
    """A rank-4 LoRA adapter of `base_dir` saved by PEFT, with nonzero lora_B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    peft_model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def good_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"), ["q_proj", "v_proj"])


@pytest.fixture
def adapter(good_adapter: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good adapter for a test to spoil."""
    return Path(shutil.copytree(good_adapter, tmp_path / "adapter"))


def edit_config(adapter_dir: Path, **changes: Any) -> None:
    path = adapter_dir / CONFIG
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_tensors(adapter_dir: Path, edit: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    from safetensors.torch import load_file, save_file

    path = adapter_dir / WEIGHTS
    save_file(edit(load_file(path)), path, metadata={"format": "pt"})


def refusal(adapter_dir: Path, base_dir: Path, **limits: Any) -> str:
    with pytest.raises(InvalidInput) as e:
        validate_adapter(adapter_dir, base_dir, **limits)
    return str(e.value)


# ---------------------------------------------------------------- accepted


def test_good_adapter_is_described(good_adapter: Path, tiny_model_dir: Path) -> None:
    info = validate_adapter(good_adapter, tiny_model_dir)
    # tiny llama: hidden 32, 2 layers; q_proj (32, 32), v_proj (16, 32) as (out, in)
    per_layer = (4 * 32 + 32 * 4) + (4 * 32 + 16 * 4)
    assert info == AdapterInfo(
        rank=4,
        alpha=8.0,
        target_modules=["q_proj", "v_proj"],
        layers=4,
        parameters=2 * per_layer,
        size_bytes=(good_adapter / WEIGHTS).stat().st_size,
    )
    assert info.scale == 2.0
    assert info.as_dict()["target_modules"] == ["q_proj", "v_proj"]
    assert (good_adapter / "README.md").exists()  # PEFT writes one; it is allowed


def test_adapter_name_segment_and_regex_targets_are_accepted(
    adapter: Path, tiny_model_dir: Path
) -> None:
    edit_tensors(
        adapter, lambda t: {k.replace(".weight", ".default.weight"): v for k, v in t.items()}
    )
    edit_config(adapter, target_modules=r".*\.(q_proj|v_proj)")
    assert validate_adapter(adapter, tiny_model_dir).layers == 4


def test_sharded_base_without_model_prefix(
    good_adapter: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A base saved in two shards from the bare model class (keys lack `model.`) still fits."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_model_dir / "model.safetensors")
    tensors = {k.removeprefix("model."): v for k, v in tensors.items()}
    keys = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(tiny_model_dir / "config.json", base)
    for name, names in shards.items():
        save_file({k: tensors[k] for k in names}, base / name)
    weight_map = {k: name for name, names in shards.items() for k in names}
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    assert base_weight_shapes(base)["layers.0.self_attn.v_proj.weight"] == [16, 32]
    assert validate_adapter(good_adapter, base).layers == 4


# ---------------------------------------------------------------- files


def test_not_a_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert "not a directory" in refusal(tmp_path / "nowhere", tiny_model_dir)


@pytest.mark.parametrize("name", [CONFIG, WEIGHTS])
def test_missing_file(adapter: Path, tiny_model_dir: Path, name: str) -> None:
    (adapter / name).unlink()
    assert f"missing {name}" in refusal(adapter, tiny_model_dir)


def test_pickle_file_refused(adapter: Path, tiny_model_dir: Path) -> None:
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04")
    message = refusal(adapter, tiny_model_dir)
    assert "pickle files refused; use safetensors" in message
    assert "adapter_model.bin" in message


def test_unexpected_file_refused(adapter: Path, tiny_model_dir: Path) -> None:
    (adapter / "run.py").write_text("print('hi')")
    message = refusal(adapter, tiny_model_dir)
    assert "unexpected file(s) run.py" in message
    assert "README.md" in message  # says what is allowed


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"peft_type": "IA3"}, "peft_type 'IA3'; allowed: LORA"),
        ({"r": None}, "r must be a positive integer, not None"),
        ({"r": 0}, "r must be a positive integer, not 0"),
        ({"r": "4"}, "r must be a positive integer, not '4'"),
        ({"lora_alpha": "8"}, "lora_alpha must be a finite number, not '8'"),
        ({"use_dora": True}, "unsupported option use_dora=True (DoRA"),
        ({"use_rslora": True}, "unsupported option use_rslora=True"),
        ({"rank_pattern": {"q_proj": 8}}, "unsupported option rank_pattern="),
        ({"alpha_pattern": {"q_proj": 16}}, "unsupported option alpha_pattern="),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head'] (full module copies"),
        ({"bias": "all"}, "unsupported option bias='all'"),
        ({"fan_in_fan_out": True}, "unsupported option fan_in_fan_out=True"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights='pissa' changes the base weights"),
        ({"future_trick": {"on": 1}}, "unsupported option future_trick="),
    ],
)
def test_config_refused(
    adapter: Path, tiny_model_dir: Path, changes: dict[str, Any], expected: str
) -> None:
    edit_config(adapter, **changes)
    message = refusal(adapter, tiny_model_dir)
    assert expected in message
    assert CONFIG in message


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_config_not_a_json_object(adapter: Path, tiny_model_dir: Path, text: str) -> None:
    (adapter / CONFIG).write_text(text)
    assert "JSON" in refusal(adapter, tiny_model_dir)


def test_rank_over_limit(adapter: Path, tiny_model_dir: Path) -> None:
    assert "r=4 is over this hub's limit of 2" in refusal(adapter, tiny_model_dir, max_rank=2)


def test_config_rank_disagrees_with_tensors(adapter: Path, tiny_model_dir: Path) -> None:
    edit_config(adapter, r=8)
    message = refusal(adapter, tiny_model_dir)
    assert "lora_A is [4, 32]" in message
    assert "must be [8, 32]" in message


def test_target_module_without_tensors(adapter: Path, tiny_model_dir: Path) -> None:
    edit_config(adapter, target_modules=["q_proj", "v_proj", "k_proj"])
    message = refusal(adapter, tiny_model_dir)
    assert "missing tensors for target module(s) k_proj" in message


# ---------------------------------------------------------------- weights


def test_over_size_limit(adapter: Path, tiny_model_dir: Path) -> None:
    assert "at most 1000 bytes" in refusal(adapter, tiny_model_dir, max_bytes=1000)


def test_random_bytes_are_not_safetensors(adapter: Path, tiny_model_dir: Path) -> None:
    import os

    (adapter / WEIGHTS).write_bytes(os.urandom(4096))
    assert "not a safetensors file" in refusal(adapter, tiny_model_dir)


def test_header_reader_guards(tmp_path: Path) -> None:
    def write(header: Any, data: bytes = b"") -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / "x.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        return path

    entry = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    assert read_safetensors_header(write({"w": entry}, bytes(16))) == {"w": ("F32", [2, 2])}
    with pytest.raises(InvalidInput, match="not a JSON object"):
        read_safetensors_header(write([1, 2]))
    with pytest.raises(InvalidInput, match="data_offsets"):
        read_safetensors_header(write({"w": entry}, bytes(8)))  # truncated data
    with pytest.raises(InvalidInput, match="16 bytes for F32"):
        read_safetensors_header(write({"w": {**entry, "shape": [3, 2]}}, bytes(16)))
    path = tmp_path / "huge.safetensors"
    path.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(InvalidInput, match="header length"):
        read_safetensors_header(path)


def test_empty_adapter(adapter: Path, tiny_model_dir: Path) -> None:
    edit_tensors(adapter, lambda t: {})
    assert "the adapter is empty" in refusal(adapter, tiny_model_dir)


def test_integer_tensor_refused(adapter: Path, tiny_model_dir: Path) -> None:
    import torch

    key = f"{Q0}.lora_A.weight"
    edit_tensors(adapter, lambda t: {**t, key: t[key].to(torch.int32)})
    message = refusal(adapter, tiny_model_dir)
    assert f"{key} (I32)" in message
    assert "F32, F16, BF16" in message


def test_tensor_that_is_not_a_lora_pair(adapter: Path, tiny_model_dir: Path) -> None:
    import torch

    extra = "base_model.model.model.embed_tokens.weight"
    edit_tensors(adapter, lambda t: {**t, extra: torch.zeros(400, 32)})
    message = refusal(adapter, tiny_model_dir)
    assert f"not LoRA pairs: {extra}" in message


def test_missing_half_of_a_pair(adapter: Path, tiny_model_dir: Path) -> None:
    key = f"{Q0}.lora_B.weight"
    edit_tensors(adapter, lambda t: {k: v for k, v in t.items() if k != key})
    message = refusal(adapter, tiny_model_dir)
    assert "missing tensors model.layers.0.self_attn.q_proj.lora_B" in message


def test_shape_mismatch(adapter: Path, tiny_model_dir: Path) -> None:
    import torch

    key = f"{Q0}.lora_B.weight"
    edit_tensors(adapter, lambda t: {**t, key: torch.zeros(16, 4)})
    message = refusal(adapter, tiny_model_dir)
    assert "module model.layers.0.self_attn.q_proj" in message
    assert "lora_B is [16, 4]" in message
    assert "base weight [32, 32]" in message


def test_renamed_module_does_not_exist(adapter: Path, tiny_model_dir: Path) -> None:
    edit_tensors(adapter, lambda t: {k.replace("q_proj", "query"): v for k, v in t.items()})
    message = refusal(adapter, tiny_model_dir)
    assert "module model.layers.0.self_attn.query does not exist" in message
    assert "(LlamaForCausalLM)" in message


def test_lora_on_a_non_linear_weight(adapter: Path, tiny_model_dir: Path) -> None:
    import torch

    def onto_norm(t: dict[str, Any]) -> dict[str, Any]:
        t = {k: v for k, v in t.items() if "layers.1.self_attn.q_proj" not in k}
        t["base_model.model.model.norm.lora_A.weight"] = torch.zeros(4, 32)
        t["base_model.model.model.norm.lora_B.weight"] = torch.zeros(32, 4)
        return t

    edit_tensors(adapter, onto_norm)
    message = refusal(adapter, tiny_model_dir)
    assert "module model.norm is not a linear layer" in message


def test_adapter_of_another_family(tiny_model_dir: Path, tmp_path: Path) -> None:
    neox = build_model(tmp_path / "neox", "gpt_neox")
    neox_adapter = make_adapter(neox, tmp_path / "neox-adapter", ["query_key_value"])
    assert validate_adapter(neox_adapter, neox).target_modules == ["query_key_value"]
    message = refusal(neox_adapter, tiny_model_dir)
    assert "gpt_neox.layers.0.attention.query_key_value does not exist" in message
    assert "in the base (LlamaForCausalLM)" in message
