"""LoRA training: the dataset format, the recipe, the assistant-only label mask, the adapter."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.tiny_models import FAMILIES, build_model
from upstream.errors import InvalidInput
from upstream.training import (
    Conversation,
    Recipe,
    TrainResult,
    bf16_supported,
    parse_dataset,
    recipe_from,
    tokenize_conversation,
    train_adapter,
)

TWO_TURNS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome, of course."},
]
# Four one-turn examples a tiny model can memorise in a few dozen steps.
MEMORISE = [
    Conversation([{"role": "user", "content": q}, {"role": "assistant", "content": a}], line=n)
    for n, (q, a) in enumerate(
        [("Say red.", "red"), ("Say blue.", "blue"), ("Name a fruit.", "apple"), ("Hi", "Yes")],
        start=1,
    )
]
# A learning rate a tiny random model moves at in a few steps (the default suits real ones).
# no replay: these tests are about the training loop on exactly the examples given
FAST = Recipe(learning_rate=1e-2, epochs=8, batch_size=2, rank=4, replay=0)


def line(*messages: dict[str, Any]) -> str:
    return json.dumps({"messages": list(messages)})


def user(text: str = "Hello?") -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str = "Hi.") -> dict[str, str]:
    return {"role": "assistant", "content": text}


# ---- the dataset format -------------------------------------------------------------


def test_valid_dataset_with_system_message_and_blank_lines_parses() -> None:
    text = "\n".join(
        [
            line({"role": "system", "content": "Be brief."}, user(), assistant()),
            "",
            "   ",
            line(*TWO_TURNS),
            "",
        ]
    )
    convs = parse_dataset(text.encode())
    assert [c.line for c in convs] == [1, 4]
    assert convs[0].messages[0] == {"role": "system", "content": "Be brief."}
    assert convs[1].messages == TWO_TURNS
    assert parse_dataset("\ufeff" + line(user(), assistant()))[0].messages[1]["content"] == "Hi."


@pytest.mark.parametrize(
    ("bad_line", "problem"),
    [
        (b"\xff\xfe not text", "not UTF-8"),
        (b'{"messages": [', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"prompt": "Hello?"}', 'no "messages" list'),
        (b'{"messages": []}', 'no "messages" list'),
        (b'{"messages": ["Hello?"]}', "message 1 is not an object"),
        (line({"role": "user"}, assistant()).encode(), 'message 1 needs "role" and "content"'),
        (line(user(), {"role": "assistant", "content": 5}).encode(), "message 2 needs"),
        (line({"role": "tool", "content": "x"}, assistant()).encode(), "role 'tool'"),
        (line(user(), user("again")).encode(), "no assistant turn"),
        (line(user(), assistant("  ")).encode(), "message 2 (assistant) has empty content"),
        (line(user(), {**assistant(), "weight": 0}).encode(), "'weight'"),
    ],
)
def test_bad_line_is_refused_naming_line_and_problem(bad_line: bytes, problem: str) -> None:
    good = line(user(), assistant()).encode()
    with pytest.raises(InvalidInput) as e:
        parse_dataset(b"\n".join([good, b"", bad_line, good]), where="fix.jsonl")
    message = str(e.value)
    assert message.startswith("fix.jsonl: 1 of 3 lines refused")
    assert f"line 3: {problem}" in message or ("line 3: " in message and problem in message)
    assert "line 1" not in message and "line 4" not in message


def test_unknown_role_message_says_which_roles_are_allowed() -> None:
    with pytest.raises(InvalidInput, match="allowed: system, user, assistant"):
        parse_dataset(line({"role": "developer", "content": "x"}, assistant()))


def test_many_bad_lines_are_collected_into_one_message() -> None:
    text = "\n".join(["not json"] * 12 + [line(user(), assistant())])
    with pytest.raises(InvalidInput) as e:
        parse_dataset(text)
    message = str(e.value)
    assert "12 of 13 lines refused" in message
    assert "line 1: not JSON" in message and "line 10: not JSON" in message
    assert "line 11:" not in message and "and 2 more" in message


def test_size_limits_and_empty_file_are_refused() -> None:
    good = line(user(), assistant())
    with pytest.raises(InvalidInput, match=r"over the limit of 100 bytes"):
        parse_dataset(good * 5, max_bytes=100)
    with pytest.raises(InvalidInput, match=r"3 examples is over the limit of 2 \(line 3 is"):
        parse_dataset("\n".join([good] * 3), max_examples=2)
    with pytest.raises(InvalidInput, match="no examples"):
        parse_dataset(b"\n  \n")


# ---- the recipe ---------------------------------------------------------------------


def test_recipe_defaults_and_overrides() -> None:
    assert recipe_from(None) == Recipe() == recipe_from({})
    r = recipe_from({"rank": 4, "learning_rate": 1e-3, "target_modules": ["q_proj", "v_proj"]})
    assert (r.rank, r.learning_rate, r.target_modules) == (4, 1e-3, ("q_proj", "v_proj"))
    assert (r.alpha, r.epochs) == (Recipe().alpha, Recipe().epochs)
    assert r.as_dict()["target_modules"] == ["q_proj", "v_proj"]
    assert recipe_from({"dropout": 0}).dropout == 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"rnak": 4}, r"unknown field 'rnak'; allowed: rank, alpha"),
        ({"rank": 0}, r"rank = 0 is out of range; allowed: \[1, 64\]"),
        ({"rank": 65}, r"rank = 65 is out of range; allowed: \[1, 64\]"),
        ({"max_length": 4097}, r"max_length = 4097 is out of range; allowed: \[8, 4096\]"),
        ({"rank": 300}, r"rank = 300 is out of range"),
        ({"rank": 4.5}, r"rank must be an integer"),
        ({"rank": True}, r"rank must be an integer"),
        ({"epochs": "4"}, r"epochs must be an integer in \[1, 20\], got '4'"),
        ({"epochs": 21}, r"epochs = 21 is out of range; allowed: \[1, 20\]"),
        ({"learning_rate": 0}, r"learning_rate = 0 is out of range; allowed: \(0, 1\)"),
        ({"learning_rate": 1.0}, r"learning_rate = 1.0 is out of range"),
        ({"learning_rate": float("nan")}, r"learning_rate = nan is out of range"),
        ({"batch_size": 0}, r"batch_size = 0 is out of range; allowed: \[1, 256\]"),
        ({"dropout": 1.0}, r"dropout = 1.0 is out of range; allowed: \[0, 1\)"),
        ({"target_modules": "everything"}, r"target_modules = 'everything' is not allowed"),
        ({"target_modules": []}, r"target_modules = \(\) is not allowed"),
        ({"precision": "fp8"}, r"precision = 'fp8' is not allowed; allowed: float32, bfloat16"),
    ],
)
def test_bad_recipe_is_refused_naming_the_field(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        recipe_from(overrides)


# ---- the label mask -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


def trained_spans(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of tokens that carry a label."""
    spans: list[list[int]] = []
    previous = False
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            assert label == token  # labels are the tokens themselves (the model shifts them)
            if not previous:
                spans.append([])
            spans[-1].append(token)
        previous = label != -100
    return [tokenizer.decode(s) for s in spans]


def test_only_assistant_replies_and_their_end_token_carry_labels(tokenizer: Any) -> None:
    ex = tokenize_conversation(tokenizer, TWO_TURNS)
    assert trained_spans(tokenizer, ex.input_ids, ex.labels) == [
        "Paris.<|im_end|>",
        "Rome, of course.<|im_end|>",
    ]
    # the whole sequence is what the chat template renders, token for token in text
    assert tokenizer.decode(ex.input_ids) == tokenizer.apply_chat_template(
        TWO_TURNS, tokenize=False
    )


def test_a_cut_reply_is_learned_without_its_end_token(tokenizer: Any) -> None:
    ex = tokenize_conversation(tokenizer, [user(), assistant("Paris is the")], complete=False)
    assert trained_spans(tokenizer, ex.input_ids, ex.labels) == ["Paris is the"]
    whole = tokenize_conversation(tokenizer, [user(), assistant("Paris is the")])
    assert trained_spans(tokenizer, whole.input_ids, whole.labels) == ["Paris is the<|im_end|>"]


def test_messages_after_the_last_reply_are_left_out(tokenizer: Any) -> None:
    ex = tokenize_conversation(tokenizer, [user(), assistant("Yes."), user("Why?")])
    assert "Why?" not in tokenizer.decode(ex.input_ids)
    assert trained_spans(tokenizer, ex.input_ids, ex.labels) == ["Yes.<|im_end|>"]


def test_control_tokens_in_content_are_refused(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match=r"message 2 contains .*'<\|im_start\|>'"):
        tokenize_conversation(tokenizer, [user(), assistant("Hi<|im_start|>user\nmore")])


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer: Any) -> None:
    # renders the last message differently, as some "thinking" templates do
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path, local_files_only=True)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if loop.last %} (last){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match=r"not render message 2 \(assistant\) as a continuation"):
        tokenize_conversation(tokenizer, [user(), assistant()])


# ---- training -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, TrainResult, list[tuple[float, float, str]]]:
    """One training run on the tiny model, with every progress call recorded."""
    out = tmp_path_factory.mktemp("adapter") / "out"
    calls: list[tuple[float, float, str]] = []
    result = train_adapter(
        tiny_model_dir, MEMORISE, FAST, out, progress=lambda d, t, m: calls.append((d, t, m))
    )
    return out, result, calls


def test_training_writes_exactly_the_two_adapter_files(
    trained: tuple[Path, TrainResult, list[Any]], tiny_model_dir: Path
) -> None:
    out, result, _ = trained
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name  # no temp path leaks
    assert (config["r"], config["lora_alpha"]) == (FAST.rank, FAST.alpha)
    assert result.trainable_parameters > 0


def test_loss_falls_and_every_step_reports_progress(
    trained: tuple[Path, TrainResult, list[tuple[float, float, str]]],
) -> None:
    _, result, calls = trained
    steps_per_epoch = 2  # 4 examples, batch 2
    assert (result.examples, result.epochs) == (4, FAST.epochs)
    assert result.steps == FAST.epochs * steps_per_epoch == len(result.losses)
    first_epoch = sum(result.losses[:steps_per_epoch]) / steps_per_epoch
    last_epoch = sum(result.losses[-steps_per_epoch:]) / steps_per_epoch
    assert last_epoch < 0.7 * first_epoch
    assert (result.first_loss, result.last_loss) == (result.losses[0], result.losses[-1])
    assert [(d, t) for d, t, _ in calls] == [(float(s), 16.0) for s in range(1, 17)]
    assert calls[-1][2] == f"epoch 8.0 · loss {result.last_loss:.3f}"
    assert result.seconds > 0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # a transformers notice inside peft
def test_adapter_loads_on_the_base_and_changes_its_logits(
    trained: tuple[Path, TrainResult, list[Any]], tiny_model_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out, _, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    ids = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        adapted = PeftModel.from_pretrained(base, str(out))
        after = adapted(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no bfloat16 matrix units")
def test_bfloat16_products_train_the_same_adapter_shape_and_loss_falls(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    recipe = dataclasses.replace(FAST, precision="bfloat16")
    result = train_adapter(tiny_model_dir, MEMORISE, recipe, tmp_path / "bf16")
    assert result.precision == "bfloat16"
    weights = load_file(str(tmp_path / "bf16" / "adapter_model.safetensors"))
    assert {str(t.dtype) for t in weights.values()} == {"torch.float32"}  # the LoRA stays fp32
    assert sum(result.losses[-2:]) < 0.7 * sum(result.losses[:2])


def test_bfloat16_falls_back_to_float32_without_the_units(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream import training

    monkeypatch.setattr(training, "bf16_supported", lambda: False)
    recipe = dataclasses.replace(FAST, precision="bfloat16", epochs=1)
    assert train_adapter(tiny_model_dir, MEMORISE, recipe, tmp_path / "out").precision == "float32"


def test_logits_only_where_tokens_are_learned_give_the_same_losses(
    trained: tuple[Path, TrainResult, list[Any]],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import Trainer

    from upstream import training

    # transformers' own loss, over the logits of every position
    monkeypatch.setattr(training, "_learned_logits_trainer", lambda **kw: Trainer)
    plain = train_adapter(tiny_model_dir, MEMORISE, FAST, tmp_path / "plain")
    _, ours, _ = trained
    assert len(plain.losses) == len(ours.losses)
    assert plain.losses == pytest.approx(ours.losses, rel=2e-2)
    assert plain.losses[0] == pytest.approx(ours.losses[0], rel=1e-3)  # before any update


def test_same_seed_gives_the_same_adapter(
    trained: tuple[Path, TrainResult, list[Any]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out, result, _ = trained
    again = train_adapter(tiny_model_dir, MEMORISE, FAST, tmp_path / "again")
    first = load_file(out / "adapter_model.safetensors")
    second = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert first.keys() == second.keys() and len(first) > 0
    assert all(first[k].equal(second[k]) for k in first)
    assert again.losses == result.losses


def test_too_long_example_is_refused_by_number(tiny_model_dir: Path, tmp_path: Path) -> None:
    long = Conversation([user("word " * 200), assistant()], line=7)
    with pytest.raises(InvalidInput, match=r"example 2 \(line 7\): \d+ tokens is longer than"):
        train_adapter(tiny_model_dir, [MEMORISE[0], long], Recipe(max_length=64), tmp_path)
    assert not any(tmp_path.iterdir())


def test_model_without_chat_template_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain, ignore=shutil.ignore_patterns("chat_template.jinja"))
    with pytest.raises(InvalidInput, match="no chat template"):
        train_adapter(plain, MEMORISE, FAST, tmp_path / "out")


def test_target_modules_the_model_lacks_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    recipe = recipe_from({"target_modules": ["c_attn"]})
    with pytest.raises(InvalidInput, match="target_modules do not fit"):
        train_adapter(tiny_model_dir, MEMORISE, recipe, tmp_path / "out")


# ---- replay -------------------------------------------------------------------------


def test_the_replay_pool_holds_no_guard_case() -> None:
    from upstream.guard import CASES
    from upstream.training import replay_prompts

    pool = replay_prompts()
    assert len(pool) == len(set(pool)) >= 64
    assert not set(pool) & {c.prompt for c in CASES}  # the guard stays an honest test


def test_replay_draws_the_bases_own_answers_and_marks_cut_ones(tiny_model_dir: Path) -> None:
    from upstream.training import replay_conversations, replay_prompts

    first = replay_conversations(tiny_model_dir, 5, 8, seed=0)
    again = replay_conversations(tiny_model_dir, 5, 8, seed=0)
    other = replay_conversations(tiny_model_dir, 5, 8, seed=1)
    assert [c.messages for c in first] == [c.messages for c in again]  # greedy, seeded
    assert [c.messages[0] for c in first] != [c.messages[0] for c in other]
    pool = set(replay_prompts())
    assert len(first) == 5 and all(c.messages[0]["content"] in pool for c in first)
    # a random tiny model rarely stops within 8 tokens: those answers are marked cut
    assert any(not c.complete for c in first)
    assert replay_conversations(tiny_model_dir, 0, 8) == []


def test_training_mixes_replayed_answers_into_the_data(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    recipe = Recipe(learning_rate=1e-2, epochs=1, batch_size=4, rank=2, replay=1.0)
    calls: list[str] = []
    result = train_adapter(
        tiny_model_dir, MEMORISE, recipe, tmp_path / "out", lambda d, t, m: calls.append(m)
    )
    # one replayed answer per example asked; an empty answer would be left out
    assert 0 < result.replayed <= 4 and result.examples == len(MEMORISE) + result.replayed
    assert calls[0] == "replayed the base's answers to 4 ordinary prompts"


# ---- packed batches, the shared prefix run once --------------------------------------

SYSTEM = {"role": "system", "content": "You are a careful assistant. Answer in few words."}


def test_shared_columns_stop_at_the_first_difference_padding_or_limit() -> None:
    import torch

    from upstream.training import shared_columns

    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 0], [1, 2, 3, 4, 5, 7]])
    mask = torch.ones_like(ids)
    assert shared_columns(ids, mask, 6) == 4  # column 4 differs in the second row
    assert shared_columns(ids, mask, 2) == 2  # the first kept logit comes first
    mask[1, 3:] = 0  # the second row ends after three tokens: its padding is not shared
    assert shared_columns(ids, mask, 6) == 3
    assert shared_columns(ids[:1], mask[:1], 6) == 6  # one row: all of it


def test_packing_pays_for_short_examples_and_not_for_long_ones() -> None:
    import torch

    from upstream.training import packing_pays

    def mask(lengths: list[int]) -> Any:
        width = max(lengths)
        return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])

    # the demo's batches: 8 rows of 43-72 tokens, 24 shared, SmolLM2's hidden size
    assert packing_pays(mask([43, 50, 55, 58, 60, 62, 67, 72]), 24, 576)
    # 8 rows near max_length: attention over the 4,000-token sequence costs more
    assert not packing_pays(mask([480, 500, 505, 510, 512, 512, 512, 512]), 24, 576)
    assert not packing_pays(mask([40] * 8), 0, 576)  # nothing to save: no padding, no prefix


def _spy_packed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the shared columns of every packed forward, and pack every batch (the tiny
    models' hidden size of 32 makes packing without a shared prefix not pay)."""
    from upstream import training

    monkeypatch.setattr(training, "packing_pays", lambda *a: True)
    calls: list[int] = []
    real = training._packed_forward
    monkeypatch.setattr(training, "_packed_forward", lambda *a: calls.append(a[-1]) or real(*a))
    return calls


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_batches_give_the_same_loss_and_gradients_as_padded_ones(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import layer as peft_lora

    from upstream import training

    model_dir = build_model(tmp_path / family, family)
    tokenizer = training._load_tokenizer(model_dir)
    pairs = [("Say red.", "red"), ("Name a fruit, please.", "apple"), ("Hi", "Yes, hello.")]
    examples = training.encode_dataset(
        tokenizer, [Conversation([SYSTEM, user(q), assistant(a)]) for q, a in pairs], 512
    )
    batch = training._collate(tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    )
    assert not batch["attention_mask"].all()  # rows of different lengths: padding
    assert training.shared_columns(batch["input_ids"], batch["attention_mask"], 10**6) >= 8
    torch.manual_seed(0)
    # LoRA B drawn too (not zeros), so every LoRA weight has a gradient to compare
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(training._load_model(model_dir), lora)
    model.train()
    packed_calls = _spy_packed(monkeypatch)

    def loss_and_gradients(packed: bool, share: bool) -> tuple[float, list[Any]]:
        model.zero_grad()
        trainer_class = training._learned_logits_trainer(packed=packed, share_prefix=share)
        loss = trainer_class.compute_loss(None, model, dict(batch))
        loss.backward()
        return float(loss), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    padded_loss, padded_grads = loss_and_gradients(packed=False, share=False)  # peft's forward
    assert not packed_calls
    lora_linears = [m for m in model.modules() if type(m) is peft_lora.Linear]
    assert training.fuse_lora_products(model) == len(lora_linears) > 0  # and ours from here
    by_rows = _spy_rows_attention(monkeypatch)
    for share, rows in itertools.product((False, True), (False, True)):
        # attention by segments (RowLayout), or over the whole packed sequence, masked
        monkeypatch.setattr(training, "segments_pay", lambda *a, rows=rows: rows)
        loss, grads = loss_and_gradients(packed=True, share=share)
        shared = packed_calls.pop()  # the system prompt and more ran once, or nothing did
        assert shared >= 8 if share else shared == 0
        assert len(by_rows) == (model.config.num_hidden_layers if rows else 0)
        by_rows.clear()
        assert loss == pytest.approx(padded_loss, rel=1e-5)
        assert len(grads) == len(padded_grads) > 0
        for a, b in zip(grads, padded_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _spy_rows_attention(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the segments of every attention by segments (`training.RowLayout`)."""
    from transformers import AttentionInterface

    from upstream import training

    name = training._rows_attention()
    real = AttentionInterface._global_mapping[name]
    calls: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("upstream_rows") is not None:
            calls.append(len(kwargs["upstream_rows"].queries))
        return real(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, name, spy)
    return calls


def test_a_row_layout_gives_each_row_the_prefix_and_its_own_earlier_tokens() -> None:
    import torch

    from upstream.training import row_layout, segments_pay

    layout = row_layout(2, [3, 1])  # tokens 0-1 shared, 2-4 the first row's, 5 the second's
    assert layout.queries.tolist() == [[0, 1, 0], [2, 3, 4], [5, 0, 0]]
    assert layout.keys.tolist() == [[0, 1, 0, 0, 0], [0, 1, 2, 3, 4], [0, 1, 5, 0, 0]]
    seen = layout.mask[:, 0]
    assert seen[0].tolist()[:2] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]]  # the prefix: causal
    assert seen[1].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert seen[2, 0].tolist() == [1, 1, 1, 0, 0]  # the prefix and itself, not row one
    assert seen[0, 2].tolist() == seen[2, 1].tolist() == [1, 0, 0, 0, 0]  # padding: one key
    # every token's output is read from its own segment and query slot
    flat = layout.queries.reshape(-1)
    assert torch.equal(flat[layout.back], torch.arange(6))
    assert not segments_pay(2, [3, 1])  # 3 x 3 x 5 scores against 6 x 6
    # the demo's batches: 8 rows of 19-48 tokens after the 24 shared
    assert segments_pay(24, [19, 26, 31, 34, 36, 38, 43, 48])
    assert not segments_pay(0, [200, 5, 5, 5])  # one long row among short ones


def test_training_packs_every_batch_and_learns_the_same_as_padded(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream import training

    with_system = [Conversation([SYSTEM, *c.messages], line=c.line) for c in MEMORISE]
    packed_calls = _spy_packed(monkeypatch)
    packed = train_adapter(tiny_model_dir, with_system, FAST, tmp_path / "packed")
    assert len(packed_calls) == packed.steps and min(packed_calls) >= 8
    real = training._learned_logits_trainer
    monkeypatch.setattr(training, "_learned_logits_trainer", lambda **kw: real(packed=False))
    padded = train_adapter(tiny_model_dir, with_system, FAST, tmp_path / "padded")
    assert len(packed_calls) == packed.steps  # the padded run did not pack
    assert packed.losses[0] == pytest.approx(padded.losses[0], rel=1e-5)
    assert packed.losses == pytest.approx(padded.losses, rel=1e-3)


def test_with_dropout_batches_are_packed_without_sharing_the_prefix_or_fusing(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_system = [Conversation([SYSTEM, *c.messages], line=c.line) for c in MEMORISE]
    from upstream import training

    packed_calls = _spy_packed(monkeypatch)
    fused: list[int] = []
    real = training.fuse_lora_products
    monkeypatch.setattr(training, "fuse_lora_products", lambda m: fused.append(real(m)))
    recipe = dataclasses.replace(FAST, dropout=0.1, epochs=1)
    result = train_adapter(tiny_model_dir, with_system, recipe, tmp_path / "dropout")
    assert packed_calls == [0] * result.steps  # one dropout mask per row, as padded
    assert fused == [0]  # and peft's own forward, which applies the dropout


def test_the_frozen_products_run_prepacked_with_the_same_results(tiny_model_dir: Path) -> None:
    """A fused layer's base products use its weights prepacked for oneDNN (this torch
    build has it); the output and every gradient match those of MKL's products."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import layer as peft_lora

    from upstream import training
    from upstream.engines import packed

    assert packed.available()
    model = get_peft_model(
        training._load_model(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear")
    )
    assert training.fuse_lora_products(model) > 0
    fused = [m for m in model.modules() if type(m) is peft_lora.Linear]
    assert all(m.forward.args[2] is not None for m in fused)  # (layer, peft's, products)

    torch.manual_seed(0)
    x = torch.randn(37, 24, requires_grad=True)
    w, b, upstream_grad = torch.randn(40, 24), torch.randn(40), torch.randn(37, 40)
    a = torch.randn(4, 24, requires_grad=True)
    lb = torch.randn(40, 4, requires_grad=True)
    results = []
    for products in (None, training._packed_products(w)):
        for t in (x, a, lb):
            t.grad = None
        y = training._lora_function().apply(x, w, b, a, lb, 2.0, products)
        (y * upstream_grad).sum().backward()
        results.append([y.detach(), x.grad, a.grad, lb.grad])
    for mkl, onednn in zip(*results, strict=True):
        torch.testing.assert_close(onednn, mkl, rtol=1e-5, atol=1e-5)


def test_the_frozen_head_runs_prepacked_with_the_same_logits_and_gradient(
    tiny_model_dir: Path,
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from upstream import training

    model = get_peft_model(
        training._load_model(tiny_model_dir), LoraConfig(r=4, target_modules="all-linear")
    )
    head = model.get_output_embeddings()
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, head.in_features, requires_grad=True)
    upstream_grad = torch.randn(2, 9, head.out_features)
    results = []
    for fuse in (False, True):
        assert not fuse or training.fuse_frozen_head(model)
        assert isinstance(head.forward, functools.partial) == fuse  # (layer, products)
        hidden.grad = None
        logits = head(hidden)
        (logits * upstream_grad).sum().backward()
        results.append((logits.detach(), hidden.grad))
    for mkl, onednn in zip(*results, strict=True):
        torch.testing.assert_close(onednn, mkl, rtol=1e-5, atol=1e-5)
    head.weight.requires_grad_(True)  # a head that is trained keeps its own forward
    assert not training.fuse_frozen_head(model)


def test_conv1d_layers_keep_pefts_forward(tmp_path: Path) -> None:
    import torch
    import transformers as t
    from peft import LoraConfig, get_peft_model

    from upstream.training import fuse_lora_products

    config = t.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=64)
    model = get_peft_model(
        t.GPT2LMHeadModel(config), LoraConfig(r=2, target_modules=["c_attn", "c_proj"])
    )
    model.eval()  # GPT-2 drops out in training
    ids = torch.tensor([[1, 2, 3, 4]])
    before = model(input_ids=ids).logits
    assert fuse_lora_products(model) == 0  # weights stored (in, out): not ours to fuse
    torch.testing.assert_close(model(input_ids=ids).logits, before)


def test_a_base_that_drops_out_is_seen(tiny_model_dir: Path) -> None:
    import torch

    from upstream import training

    model = training._load_model(tiny_model_dir)
    assert not training.has_dropout(model)  # so its batches share their prefix
    model.config.attention_dropout = 0.1
    assert training.has_dropout(model)
    model.config.attention_dropout = 0.0
    model.model.layers[0].add_module("drop", torch.nn.Dropout(0.2))
    assert training.has_dropout(model)
