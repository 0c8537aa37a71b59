"""Merging LoRA adapters: exact deltas, TIES and DARE, streamed shards, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import build_model
from upstream.errors import InvalidInput
from upstream.merging import (
    MergeParams,
    _elect_and_merge,
    _keep_largest,
    _kth_largest,
    _Workspace,
    check_params,
    merge,
    preflight,
)

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
KEY_Q0 = "model.layers.0.self_attn.q_proj.weight"  # a weight both test adapters change


def make_adapter(
    base_dir: Path, out_dir: Path, targets: list[str], r: int = 4, alpha: int = 8, seed: int = 0
) -> Path:
    """A LoRA adapter of `base_dir` saved by PEFT, with random nonzero A and B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    # Only the LoRA pairs, also when lm_head is a target (PEFT would add a full copy).
    peft_model.save_pretrained(out_dir, save_embedding_layers=False)
    return out_dir


def load(out_dir: Path) -> dict[str, Any]:
    """Every tensor of a model directory, sharded or not."""
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for f in sorted(out_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def exact_deltas(adapter_dir: Path) -> dict[str, Any]:
    """Base key -> B·A·alpha/r computed directly from an adapter's files."""
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    out = {}
    for key, a in tensors.items():
        if ".lora_A." in key:
            b = tensors[key.replace(".lora_A.", ".lora_B.")]
            module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            out[f"{module}.weight"] = (b.float() @ a.float()) * scale
    return out


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two adapters with different ranks, alphas and (overlapping) targets."""
    root = tmp_path_factory.mktemp("adapters")
    return [
        make_adapter(tiny_model_dir, root / "a", ["q_proj", "v_proj"], r=4, alpha=8, seed=1),
        make_adapter(
            tiny_model_dir, root / "b", ["q_proj", "o_proj", "down_proj"], r=2, alpha=5, seed=2
        ),
    ]


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- linear


def test_linear_is_base_plus_weighted_exact_deltas(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    import torch

    calls: list[tuple[float, float, str]] = []
    params = check_params("linear", 2, weights=[0.7, 0.3])
    result = merge(tiny_model_dir, adapters, params, tmp_path / "out", lambda *a: calls.append(a))
    base, merged = load(tiny_model_dir), load(tmp_path / "out")
    expected = {k: v.clone() for k, v in base.items()}
    for w, adapter in zip((0.7, 0.3), adapters, strict=True):
        for key, delta in exact_deltas(adapter).items():
            expected[key] += w * delta
    assert merged.keys() == base.keys()
    for key in base:
        assert merged[key].dtype == base[key].dtype
        assert torch.allclose(merged[key], expected[key], atol=1e-5, rtol=0), key
    touched = set(exact_deltas(adapters[0])) | set(exact_deltas(adapters[1]))
    assert len(touched) == 2 * 4  # 2 layers x q, v, o, down
    for key in base.keys() - touched:  # untouched tensors pass through bit for bit
        assert torch.equal(merged[key], base[key]), key
    assert result.tensors == len(base) and result.changed == len(touched)
    assert result.shards == [WEIGHTS] and result.method == "linear"
    assert result.params == {
        "method": "linear",
        "weights": [0.7, 0.3],
        "density": None,
        "seed": None,
        "majority_sign_method": "total",
    }
    assert calls[0] == (0, len(base), "merging") and calls[-1] == (len(base), len(base), "merging")


def test_one_adapter_equals_peft_merge_and_loads_and_generates(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    merge(tiny_model_dir, adapters[1:], check_params("linear", 1), out)
    peft_merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapters[1]
    ).merge_and_unload()
    ours = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    theirs = peft_merged.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, theirs[key], atol=1e-5, rtol=0), key
    assert not torch.equal(ours.state_dict()[KEY_Q0], load(tiny_model_dir)[KEY_Q0])
    # Every non-weight file comes along unchanged; weights and dotfiles do not.
    base_files = {
        k: v for k, v in files_of(tiny_model_dir).items() if not k.endswith(".safetensors")
    }
    assert {k: v for k, v in files_of(out).items() if k != WEIGHTS} == base_files
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tok("The capital of France", return_tensors="pt")
    generated = ours.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4


def test_other_dtypes_are_kept_and_untouched_bytes_identical(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import save_file

    base = tmp_path / "bf16"
    shutil.copytree(tiny_model_dir, base)
    tensors = {k: v.to(torch.bfloat16) for k, v in load(tiny_model_dir).items()}
    tensors["model.norm.weight"] = tensors["model.norm.weight"].float()  # a mixed checkpoint
    save_file(tensors, base / WEIGHTS, metadata={"format": "pt"})
    merge(base, adapters[:1], check_params("linear", 1), tmp_path / "out")
    merged = load(tmp_path / "out")
    deltas = exact_deltas(adapters[0])
    for key, value in tensors.items():
        assert merged[key].dtype == value.dtype, key
        if key in deltas:  # computed in float32, stored as bf16
            assert torch.equal(merged[key], (value.float() + deltas[key]).to(torch.bfloat16))
        else:
            assert merged[key].view(torch.uint8).numpy().tobytes() == (
                value.view(torch.uint8).numpy().tobytes()
            ), key


# ---------------------------------------------------------------- ties and dare


def hand_made(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A one-weight base W (2, 2) and two rank-1 adapters with deltas one can add by hand.

    ΔW1 = [1, 2]ᵀ·[1, -1] = [[1, -1], [2, -2]];  ΔW2 = [-3, 0.5]ᵀ·[1, 1] = [[-3, -3], [0.5, 0.5]]
    """
    import torch
    from safetensors.torch import save_file

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "toy"}))
    save_file({"proj.weight": torch.tensor([[10.0, 20.0], [30.0, 40.0]])}, base / WEIGHTS)
    dirs = []
    for name, b, a in (
        ("one", [[1.0], [2.0]], [[1.0, -1.0]]),
        ("two", [[-3.0], [0.5]], [[1.0, 1.0]]),
    ):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["proj"]})
        )
        save_file(
            {
                "base_model.model.proj.lora_A.weight": torch.tensor(a),
                "base_model.model.proj.lora_B.weight": torch.tensor(b),
            },
            d / "adapter_model.safetensors",
        )
        dirs.append(d)
    return base, dirs


@pytest.mark.parametrize(
    ("method", "kwargs", "delta"),
    [
        # Opposite signs at (0, 0) and (1, 1): the larger total wins, only it is kept.
        ("linear", {}, [[-2.0, -4.0], [2.5, -1.5]]),
        ("ties", {"density": 1.0}, [[-3.0, -2.0], [1.25, -2.0]]),
        # Counting signs instead: 1 against 1 is a tie, which goes to +.
        ("ties", {"density": 1.0, "majority_sign_method": "frequency"}, [[1.0, -2.0], [1.25, 0.5]]),
        # Trim to half: ΔW1 keeps its row of 2s, ΔW2 its row of 3s; no sign conflict is left.
        ("ties", {"density": 0.5}, [[-3.0, -3.0], [2.0, -2.0]]),
        # Weights scale the agreeing entries; the mean is over how many agree.
        ("ties", {"density": 1.0, "weights": [2.0, 1.0]}, [[-3.0, -2.5], [2.25, -4.0]]),
        # DARE at density 1 drops nothing: TIES' election alone.
        ("dare_ties", {"density": 1.0}, [[-3.0, -2.0], [1.25, -2.0]]),
    ],
)
def test_methods_on_a_case_checked_by_hand(
    tmp_path: Path, method: str, kwargs: dict[str, Any], delta: list[list[float]]
) -> None:
    import torch

    base, dirs = hand_made(tmp_path)
    merge(base, dirs, check_params(method, 2, **kwargs), tmp_path / "out")
    expected = torch.tensor([[10.0, 20.0], [30.0, 40.0]]) + torch.tensor(delta)
    assert torch.equal(load(tmp_path / "out")["proj.weight"], expected)


@pytest.mark.filterwarnings("ignore:The density")
def test_ties_kernels_match_peft() -> None:
    import torch
    from peft.utils.merge_utils import ties

    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(48, 40, generator=g) for _ in range(3)]
    weights = [0.5, 1.0, 2.0]
    ws = _Workspace(48 * 40, 48 * 40 * 4)
    for sign_method in ("total", "frequency"):
        for density in (0.3, 1.0):
            trimmed = [_keep_largest(d.clone(), density, ws) for d in deltas]
            ours = _elect_and_merge(trimmed, weights, sign_method, ws)
            theirs = ties(deltas, torch.tensor(weights), density, sign_method)  # type: ignore[arg-type]
            assert torch.allclose(ours, theirs, atol=1e-6), (sign_method, density)
    # Trimming keeps exactly the int(density·n) largest magnitudes.
    kept = _keep_largest(deltas[0].clone(), 0.25, ws)
    assert int((kept != 0).sum()) == int(0.25 * 48 * 40)
    assert kept.abs().max() == deltas[0].abs().max()


@pytest.mark.parametrize("k", [1, 7, 1000, 150_000, 299_999, 300_000])
@pytest.mark.parametrize("pattern", ["random", "ties", "hidden from the sample"])
def test_kth_largest_is_exact(k: int, pattern: str) -> None:
    import torch

    n = 300_000  # sampled every 4th value
    values = torch.rand(n, generator=torch.Generator().manual_seed(k))
    if pattern == "ties":
        values[::3] = 0.5
    elif pattern == "hidden from the sample":  # the sample sees only zeros: bracket misses
        values[::4] = 0.0
    expected = float(values.sort(descending=True).values[k - 1])
    assert _kth_largest(values.numpy(), k, _Workspace(n, 0)) == expected


def test_dare_ties_is_deterministic_per_seed(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    import torch

    def run(name: str, seed: int) -> dict[str, Any]:
        merge(
            tiny_model_dir,
            adapters[:1],
            check_params("dare_ties", 1, density=0.4, seed=seed),
            tmp_path / name,
        )
        return load(tmp_path / name)

    first, other = run("a", 7), run("c", 8)
    run("b", 7)
    assert (tmp_path / "a" / WEIGHTS).read_bytes() == (tmp_path / "b" / WEIGHTS).read_bytes()
    assert not torch.equal(first[KEY_Q0], other[KEY_Q0])
    # One adapter: each entry of ΔW is kept (scaled by 1/0.4) or dropped, about 40 % kept.
    base, delta = load(tiny_model_dir)[KEY_Q0], exact_deltas(adapters[0])[KEY_Q0]
    change = first[KEY_Q0] - base
    kept = (change != 0).float().mean().item()
    assert 0.3 < kept < 0.5
    assert torch.allclose(change[change != 0], (delta / 0.4)[change != 0], atol=1e-5)


# ---------------------------------------------------------------- output


def test_shards_and_index_load_like_a_single_file(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    params = check_params("ties", 2, density=0.5)
    single = merge(tiny_model_dir, adapters, params, tmp_path / "single")
    sharded = merge(tiny_model_dir, adapters, params, tmp_path / "sharded", max_shard_bytes=20_000)
    assert single.shards == [WEIGHTS]
    n = len(sharded.shards)
    assert n > 2 and sharded.shards[0] == f"model-00001-of-{n:05d}.safetensors"
    index = json.loads((tmp_path / "sharded" / INDEX).read_text())
    tensors = load(tmp_path / "single")
    assert index["weight_map"].keys() == tensors.keys()
    assert set(index["weight_map"].values()) == set(sharded.shards)
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors.values()
    )
    assert not [p for p in (tmp_path / "sharded").iterdir() if p.name.startswith(".")]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "single", local_files_only=True)
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded", local_files_only=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_tied_embeddings_stay_tied(tiny_model_dir: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    base = tmp_path / "tied"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    # Made on the untied original; the tied copy still holds an lm_head.weight it would fit.
    lm_head = make_adapter(tiny_model_dir, tmp_path / "lm_head", ["q_proj", "lm_head"])
    with pytest.raises(InvalidInput, match="tie_word_embeddings"):
        merge(base, [lm_head], check_params("linear", 1), tmp_path / "refused")
    tensors = load(base)
    del tensors["lm_head.weight"]
    save_file(tensors, base / WEIGHTS, metadata={"format": "pt"})
    adapter = make_adapter(base, tmp_path / "q", ["q_proj"])
    merge(base, [adapter], check_params("linear", 1), tmp_path / "out")
    assert "lm_head.weight" not in load(tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", local_files_only=True)
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_out_dir_is_absent_empty_or_complete(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    stale = tmp_path / ".out.merging-killed"  # what a killed merge leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a shard")

    def fail(done: float, total: float, message: str) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge(tiny_model_dir, adapters[:1], check_params("linear", 1), out, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written stays
    out.mkdir()  # an empty directory is fine
    merge(tiny_model_dir, adapters[:1], check_params("linear", 1), out)
    assert WEIGHTS in {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(InvalidInput, match="not an empty directory"):
        merge(tiny_model_dir, adapters[:1], check_params("linear", 1), out)


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("slerp", 2), {}, "allowed: linear, ties, dare_ties"),
        (("linear", 0), {}, "at least one adapter"),
        (("linear", 2), {"weights": [1.0]}, "1 weight(s) given for 2 adapter(s)"),
        (("ties", 2), {"weights": [1.0, float("nan")]}, "weight 2 is nan"),
        (("ties", 1), {"weights": [float("inf")]}, "finite"),
        (("ties", 1), {"density": 0.0}, "outside (0, 1]"),
        (("dare_ties", 1), {"density": 1.5}, "outside (0, 1]"),
        (("linear", 1), {"density": 0.5}, "density applies to ties and dare_ties only"),
        (("linear", 1), {"seed": 3}, "seed applies to dare_ties only"),
        (("ties", 1), {"seed": 3}, "seed applies to dare_ties only"),
        (("dare_ties", 1), {"seed": -1}, "non-negative integer"),
        (("ties", 1), {"majority_sign_method": "mean"}, "allowed: total, frequency"),
    ],
)
def test_check_params_refuses(args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInput) as e:
        check_params(*args, **kwargs)
    assert message in str(e.value)


def test_check_params_defaults() -> None:
    assert check_params("linear", 2) == MergeParams("linear", (1.0, 1.0))
    assert check_params("ties", 1, weights=[2]) == MergeParams("ties", (2.0,), 0.5)
    assert check_params("dare_ties", 1).as_dict() == {
        "method": "dare_ties",
        "weights": [1.0],
        "density": 0.5,
        "seed": 0,
        "majority_sign_method": "total",
    }


def test_preflight_refuses_an_adapter_of_another_model(
    tiny_model_dir: Path, adapters: list[Path], tmp_path: Path
) -> None:
    neox = build_model(tmp_path / "neox", "gpt_neox")
    foreign = make_adapter(neox, tmp_path / "neox-adapter", ["query_key_value"])
    assert [i.rank for i in preflight(tiny_model_dir, adapters)] == [4, 2]
    with pytest.raises(InvalidInput, match="does not exist in the base") as e:
        preflight(tiny_model_dir, [adapters[0], foreign])
    assert str(foreign) in str(e.value)
    with pytest.raises(InvalidInput):
        merge(tiny_model_dir, [adapters[0], foreign], check_params("linear", 2), tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written
