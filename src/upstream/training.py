"""LoRA fine-tuning: a contributed chat dataset becomes an adapter for the target revision.

A contributor may send training examples instead of an adapter; the hub trains the
adapter itself, on the CPU, with one recipe (`Recipe`) whose every field the
contribution may override. The defaults are chosen for what contributions usually are:
a few dozen short conversations that fix one behaviour of a small model.

- **LoRA rank 8, alpha 16, on every linear layer** ("all-linear": attention and MLP
  projections, not the output head). Small enough to train in seconds, and adapters
  of this shape merge exactly into a release (ΔW = B·A·alpha/rank per layer).
- **Constant learning rate 2e-4, 4 epochs, batch 8, AdamW.** With ~25 examples that is
  ~16 optimizer steps: too few for a warm-up or a decay schedule to matter, enough for
  the loss to fall from 4.0 to 0.19 on 25 one-word answers with SmolLM2-135M, in
  about 30 s on two CPU cores (tests/test_training.py trains exactly that).
- **Replay of the base's own answers.** Contributed examples teach one behaviour (say,
  one-word answers) and, alone, teach the model to stop early everywhere. So the base's
  own greedy answers to ordinary prompts (a bundled pool of 87 that holds no guard case),
  twice as many as the contributed examples (at most the whole pool) and cut at 24 new
  tokens, are mixed in: the adapter learns the new behaviour where its instruction is,
  and the base's elsewhere.
  A cut answer carries no end-of-turn label, so the model is not taught to stop there.
  Measured on three families of ignored instructions in docs/training.md (guard cases
  broken alone: 9-17 of 48 without replay, 2-6 with it).
- **Loss on the assistant's tokens only.** The model should learn the replies, not
  to predict the user's questions. Each conversation is rendered with the model's own
  chat template, turn by turn: the text the template renders for the prompt before
  assistant turn k (`messages[:k]` plus the generation prompt) must be a prefix of the
  text with turn k (`messages[:k+1]`); what turn k adds is the reply. The reply's
  content and the end-of-turn token that follows it (e.g. `<|im_end|>`, so the model
  learns to stop) carry labels; the template's own text (role headers, the newline
  after `<|im_end|>`) is masked with -100. The conversation is tokenized once, as the
  engine does; the tokens of each rendered prefix must be a prefix of its tokens, so
  the reply's tokens are known exactly. A template that renders earlier turns
  differently once later ones exist (some "thinking" templates do), or a tokenizer
  that merges a reply's first token with the prompt's last, breaks that property and
  the example is refused with that reason.
- **Examples are never truncated.** One longer than `max_length` tokens is refused by
  number: a silently cut reply would teach the model to stop mid-sentence.
- **Deterministic.** The LoRA initialisation, the shuffling and dropout all follow
  `seed`; on the same machine the same inputs give the same adapter, tensor for
  tensor (float32 on the CPU).

The dataset format is OpenAI's chat fine-tuning JSONL (DESIGN.md): one
`{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}` per line.
`parse_dataset` refuses what it cannot train on, naming the line and the rule.

The output is the two files a PEFT adapter needs, `adapter_config.json` and
`adapter_model.safetensors`, the same shape a contributor would upload.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from upstream.engines.base import GenRequest
from upstream.engines.fastgen import full_attention
from upstream.errors import InvalidInput

ROLES = ("system", "user", "assistant")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MAX_LISTED_ERRORS = 10  # line errors shown in one message; the rest are counted
IGNORE = -100  # label for tokens that carry no loss (PyTorch cross-entropy's ignore_index)

ProgressCallback = Callable[[float, float, str], None]  # (done steps, total steps, message)
# (prompts, max new tokens) -> each prompt's greedy answer and the tokens it took
Answer = Callable[[Sequence[str], int], list[tuple[str, int]]]


PRECISIONS = ("float32", "bfloat16")
PRECISION_DEFAULT = "float32"


def bf16_supported() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively."""
    from upstream.engines.packed import bf16_supported as supported

    return supported()


@dataclass(frozen=True)
class Recipe:
    """The default LoRA recipe; every field overridable per contribution."""

    rank: int = 8  # LoRA r: enough to fix a behaviour; 2.4M weights (1.8%) on SmolLM2-135M
    alpha: int = 16  # scale = alpha / rank = 2, the usual choice for small ranks
    dropout: float = 0.0  # a few epochs over a few examples do not overfit enough to need it
    target_modules: tuple[str, ...] | str = "all-linear"  # every projection, not the head
    learning_rate: float = 2e-4  # constant; the common LoRA rate, measured to converge here
    epochs: int = 4  # 16 steps for 25 examples: loss 4.0 -> 0.19 on SmolLM2-135M
    batch_size: int = 8  # 4 steps an epoch for 25 examples; batches of short ones pad little
    max_length: int = 512  # tokens per example; longer ones are refused, never truncated
    seed: int = 0  # LoRA init, shuffling, dropout: same seed, same adapter
    # Replay: the base's own greedy answers to this many ordinary prompts per contributed
    # example (data/replay_prompts.jsonl, never the guard's cases) are trained on too, so
    # the adapter learns the contributed behaviour *where it is asked for* and keeps the
    # base's answers elsewhere. 0 turns it off. Measured in docs/training.md.
    replay: float = 2.0
    replay_max_new_tokens: int = 24  # an answer cut here is learned without its end (cheap)
    # "bfloat16": the forward and backward matrix products in bfloat16 (torch autocast;
    # the LoRA weights, their gradients and the optimizer stay float32), on CPUs with
    # bfloat16 units (AMX, AVX512-BF16); elsewhere float32 is used and recorded.
    precision: str = PRECISION_DEFAULT

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name not in _RANGES:
                continue
            low, high, low_open, high_open = _RANGES[f.name]
            allowed = _interval(low, high, low_open, high_open)
            value = getattr(self, f.name)
            # a float field takes an int (dropout 0); an int field takes only an int
            types = (int, float) if isinstance(f.default, float) else (int,)
            if isinstance(value, bool) or not isinstance(value, types):
                kind = "a number" if float in types else "an integer"
                raise InvalidInput(f"recipe: {f.name} must be {kind} in {allowed}, got {value!r}")
            below = value <= low if low_open else value < low
            above = value >= high if high_open else value > high
            if below or above or math.isnan(value):
                raise InvalidInput(
                    f"recipe: {f.name} = {value!r} is out of range; allowed: {allowed}"
                )
        _check_targets(self.target_modules)
        if self.precision not in PRECISIONS:
            raise InvalidInput(
                f"recipe: precision = {self.precision!r} is not allowed; allowed: "
                + ", ".join(PRECISIONS)
            )

    def as_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready values (to record with the adapter it made)."""
        d = asdict(self)
        if isinstance(self.target_modules, tuple):
            d["target_modules"] = list(self.target_modules)
        return d


# field: (low, high, low exclusive, high exclusive)
_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    # bounds on what one contribution may make a worker do: a rank the adapter checks
    # accept by default, at most 20 passes over the data, examples up to 4,096 tokens
    "rank": (1, 64, False, False),
    "alpha": (1, 4096, False, False),
    "dropout": (0.0, 1.0, False, True),
    "learning_rate": (0.0, 1.0, True, True),
    "epochs": (1, 20, False, False),
    "batch_size": (1, 256, False, False),
    "max_length": (8, 4096, False, False),
    "seed": (0, 2**32 - 1, False, False),
    "replay": (0.0, 4.0, False, False),
    "replay_max_new_tokens": (8, 512, False, False),
}
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,99}$")


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    def show(x: float) -> str:
        return f"{x:g}" if isinstance(x, float) else str(x)

    return f"{'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"


def _check_targets(value: object) -> None:
    allowed = '"all-linear" or a list of 1 to 64 module names such as ["q_proj", "v_proj"]'
    if value == "all-linear":
        return
    if (
        isinstance(value, tuple)
        and 1 <= len(value) <= 64
        and all(isinstance(v, str) and _MODULE_NAME.match(v) for v in value)
    ):
        return
    raise InvalidInput(f"recipe: target_modules = {value!r} is not allowed; allowed: {allowed}")


def recipe_from(overrides: dict[str, Any] | None) -> Recipe:
    """The default recipe with a contribution's overrides applied and checked."""
    if not overrides:
        return Recipe()
    if not isinstance(overrides, dict):
        raise InvalidInput(f"recipe: must be an object of overrides, got {overrides!r}")
    known = [f.name for f in fields(Recipe)]
    unknown = sorted(k for k in overrides if k not in known)
    if unknown:
        raise InvalidInput(
            f"recipe: unknown field {', '.join(map(repr, unknown))}; allowed: {', '.join(known)}"
        )
    values = dict(overrides)
    if isinstance(values.get("target_modules"), list):
        values["target_modules"] = tuple(values["target_modules"])
    return Recipe(**values)


@dataclass
class Conversation:
    """One training example: chat messages, each a role and its content."""

    messages: list[dict[str, str]]
    line: int = 0  # where it was in the JSONL file (1-based; 0 when not from a file)
    # False for a reply cut at a token limit (a replayed answer of the base): its content
    # is learned but not the end-of-turn token, so the model is not taught to stop there.
    complete: bool = True


def parse_dataset(
    text: str | bytes,
    where: str = "dataset",
    max_bytes: int = 10_000_000,
    max_examples: int = 10_000,
) -> list[Conversation]:
    """Conversations from OpenAI chat fine-tuning JSONL, or InvalidInput naming bad lines."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if len(raw) > max_bytes:
        raise InvalidInput(f"{where}: {len(raw):,} bytes is over the limit of {max_bytes:,} bytes")
    lines = raw.split(b"\n")
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        lines[0] = lines[0][3:]
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise InvalidInput(f"{where}: no examples (the file is empty)")
    if len(numbered) > max_examples:
        raise InvalidInput(
            f"{where}: {len(numbered):,} examples is over the limit of {max_examples:,}"
            f" (line {numbered[max_examples][0]} is the first one over)"
        )
    conversations: list[Conversation] = []
    errors: list[str] = []
    for n, line in numbered:
        try:
            conversations.append(Conversation(_parse_line(line), line=n))
        except ValueError as e:
            errors.append(f"line {n}: {e}")
    if errors:
        fmt = '{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}'
        _refuse(
            f"{where}: {len(errors)} of {len(numbered)} lines refused (each line must be {fmt})",
            errors,
        )
    return conversations


def _refuse(headline: str, errors: list[str]) -> None:
    """Raise one InvalidInput listing the first few errors and counting the rest."""
    shown = "\n".join(f"  {e}" for e in errors[:MAX_LISTED_ERRORS])
    more = len(errors) - MAX_LISTED_ERRORS
    tail = f"\n  ... and {more} more" if more > 0 else ""
    raise InvalidInput(f"{headline}:\n{shown}{tail}")


def _parse_line(line: bytes) -> list[dict[str, str]]:
    """The messages of one JSONL line; ValueError says what is wrong with it."""
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start + 1} of the line)") from None
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object but {type(record).__name__}")
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError('no "messages" list (a non-empty list of messages is required)')
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages, start=1):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} is not an object")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            raise ValueError(
                f"message {i} has {', '.join(map(repr, extra))}; only role and content are"
                " supported (tool calls, names and weights are not)"
            )
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise ValueError(f'message {i} needs "role" and "content" strings')
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; allowed: {', '.join(ROLES)}")
        if not content.strip():
            raise ValueError(f"message {i} ({role}) has empty content")
        out.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise ValueError("no assistant turn (there is nothing to learn from it)")
    return out


@dataclass
class TrainResult:
    """What one training run did: its size, its time and its loss curve."""

    steps: int  # optimizer steps
    epochs: int
    examples: int
    seconds: float  # wall seconds for the whole call: load, tokenize, train, save
    losses: list[float] = field(default_factory=list)  # one per optimizer step
    first_loss: float = math.nan
    last_loss: float = math.nan
    trainable_parameters: int = 0
    replayed: int = 0  # of `examples`, the base's own answers replayed
    precision: str = "float32"  # what the matrix products ran in (see Recipe.precision)


@dataclass
class _Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where the token carries no loss


def tokenize_conversation(
    tokenizer: Any, messages: list[dict[str, str]], complete: bool = True
) -> _Example:
    """Token ids of a conversation and labels on its assistant replies only.

    The whole conversation is tokenized at once; the token ids of each rendered prefix
    (prompt before a reply, prompt and reply) must be a prefix of those, so a reply's
    tokens are known exactly. Raises ValueError (the caller names the example) where
    the template or the tokenizer does not split that way.
    """
    # Messages after the last assistant turn would only be masked: leave them out.
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[: last + 1]
    specials = _special_strings(tokenizer)
    for i, m in enumerate(messages, start=1):
        found = [s for s in specials if s in m["content"]]
        if found:
            raise ValueError(
                f"message {i} contains the template's control token {found[0]!r},"
                " which content may not hold"
            )

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    full = _render(tokenizer, messages, generation_prompt=False)
    ids = encode(full)  # (seq,) the conversation as one text, as generation would see it
    labels = [IGNORE] * len(ids)
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:k], generation_prompt=True)
        with_reply = _render(tokenizer, messages[: k + 1], generation_prompt=False)
        if not full.startswith(with_reply) or not with_reply.startswith(prompt):
            raise ValueError(
                f"the model's chat template does not render message {k + 1} (assistant) as"
                " a continuation of the prompt before it (it rewrites earlier text as turns"
                " are added), so the loss cannot be put on the replies alone"
            )
        reply = with_reply[len(prompt) :]
        content = m["content"].strip()
        if content not in reply:
            raise ValueError(
                f"the model's chat template does not render the content of message {k + 1}"
            )
        # Train on the content and the end-of-turn token after it, not on the template's
        # whitespace after that: generation stops at the end-of-turn token. A reply that
        # was cut short (`complete` false) is learned without it.
        start_of_content = reply.find(content)
        end = (
            _end_of_turn(reply, start_of_content, specials)
            if complete or k != last
            else start_of_content + len(content)
        )
        start = _token_prefix(ids, encode(prompt), k + 1)
        stop = _token_prefix(ids, encode(with_reply[: len(prompt) + end]), k + 1)
        labels[start:stop] = ids[start:stop]
    return _Example(input_ids=ids, labels=labels)


def _token_prefix(ids: list[int], prefix: list[int], message: int) -> int:
    """len(prefix), checked to be where the conversation's tokens split there too."""
    if ids[: len(prefix)] != prefix:
        raise ValueError(
            f"the tokenizer merges text across the start or end of message {message}"
            " (assistant), so its tokens cannot be told apart from the template's;"
            " leading or trailing whitespace in the content can cause this"
        )
    return len(prefix)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except (TemplateError, ValueError) as e:
        raise ValueError(f"the model's chat template refused it: {e}") from None
    return str(text)


def _special_strings(tokenizer: Any) -> list[str]:
    """The control tokens (e.g. <|im_end|>) as text, longest first."""
    names = set(tokenizer.all_special_tokens)
    names.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return sorted((n for n in names if n), key=len, reverse=True)


def _end_of_turn(reply: str, content_start: int, specials: list[str]) -> int:
    """Where the trained part of a reply ends: after the first control token past the content."""
    hits = [(i, s) for s in specials if (i := reply.find(s, max(content_start, 0))) >= 0]
    if not hits:
        return len(reply)  # no end-of-turn token: the whole reply
    i, s = min(hits)
    return i + len(s)


def _collate(pad_id: int) -> Callable[[list[dict[str, list[int]]]], dict[str, Any]]:
    """Pad a batch on the right to its longest example (labels with IGNORE)."""

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        ids, labels, mask = [], [], []
        for b in batch:
            pad = width - len(b["input_ids"])
            ids.append(b["input_ids"] + [pad_id] * pad)
            labels.append(b["labels"] + [IGNORE] * pad)
            mask.append([1] * len(b["input_ids"]) + [0] * pad)
        return {
            "input_ids": torch.tensor(ids),  # (batch, seq)
            "labels": torch.tensor(labels),  # (batch, seq)
            "attention_mask": torch.tensor(mask),  # (batch, seq)
        }

    return collate


def _load_tokenizer(model_dir: Path) -> Any:
    """The base's tokenizer, which must have a chat template (no remote code)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    if not tokenizer.chat_template:
        raise InvalidInput(
            f"{model_dir.name}: the model has no chat template, so chat examples cannot be"
            " rendered for it; train on a model with a chat template"
        )
    return tokenizer


def _load_model(model_dir: Path) -> Any:
    """The base model in float32 on the CPU: safetensors only, no remote code."""
    from upstream.engines.hf import load_weights

    model = load_weights(model_dir)
    model.config.use_cache = False  # no generation during training
    return model


def encode_dataset(
    tokenizer: Any, conversations: Sequence[Conversation], max_length: int
) -> list[_Example]:
    """Every conversation tokenized and labelled, or InvalidInput naming the bad ones."""
    examples: list[_Example] = []
    errors: list[str] = []
    for n, conv in enumerate(conversations, start=1):
        name = f"example {n}" + (f" (line {conv.line})" if conv.line else "")
        try:
            ex = tokenize_conversation(tokenizer, conv.messages, conv.complete)
        except ValueError as e:
            errors.append(f"{name}: {e}")
            continue
        if len(ex.input_ids) > max_length:
            errors.append(
                f"{name}: {len(ex.input_ids)} tokens is longer than max_length {max_length}"
                " (split it, or raise max_length in the recipe)"
            )
        examples.append(ex)
    if errors:
        _refuse(f"dataset: {len(errors)} of {len(conversations)} examples refused", errors)
    return examples


def train_adapter(
    model_dir: Path,
    conversations: Sequence[Conversation],
    recipe: Recipe,
    out_dir: Path,
    progress: ProgressCallback | None = None,
    answer: Answer | None = None,
) -> TrainResult:
    """Train a LoRA adapter on the conversations and write it to out_dir (two files);
    `answer` generates the base's replayed answers (see `replay_conversations`)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    started = time.perf_counter()
    model_dir = Path(model_dir)
    if not conversations:
        raise InvalidInput("dataset: no examples to train on")
    tokenizer = _load_tokenizer(model_dir)
    # the contributor's examples first: bad data is refused before any generation or weights
    examples = encode_dataset(tokenizer, conversations, recipe.max_length)
    replayed = replay_conversations(
        model_dir,
        round(recipe.replay * len(conversations)),
        recipe.replay_max_new_tokens,
        recipe.seed,
        answer,
    )
    if progress and replayed:
        progress(0.0, 1.0, f"replayed the base's answers to {len(replayed)} ordinary prompts")
    # The replayed answers are the hub's, not the contributor's: one the template cannot
    # take (a control token in the base's own answer) is left out, not blamed on a line.
    kept = []
    for conv in replayed:
        try:
            kept += encode_dataset(tokenizer, [conv], recipe.max_length)
        except InvalidInput:
            continue
    replayed_count = len(kept)
    examples += kept
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # never trained
    model = _load_model(model_dir)

    set_seed(recipe.seed)  # the LoRA A matrices are drawn here
    lora = LoraConfig(
        r=recipe.rank,
        lora_alpha=recipe.alpha,
        lora_dropout=recipe.dropout,
        target_modules=(
            list(recipe.target_modules)
            if isinstance(recipe.target_modules, tuple)
            else recipe.target_modules
        ),
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # a transformers deprecation notice inside peft
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. target modules not found in this architecture
        raise InvalidInput(f"recipe: target_modules do not fit {model_dir.name}: {e}") from e
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    fuse_lora_products(peft_model)
    fuse_frozen_head(peft_model)
    precision = recipe.precision
    if precision == "bfloat16" and not bf16_supported():
        precision = "float32"  # the same recipe on a CPU without bfloat16 units

    losses: list[float] = []

    class Progress(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))
                if progress:
                    epoch = float(logs.get("epoch", state.epoch or 0.0))
                    progress(
                        float(state.global_step),
                        float(state.max_steps),
                        f"epoch {epoch:.1f} · loss {logs['loss']:.3f}",
                    )

    forward_args = inspect.signature(model.forward).parameters
    trainer_class = (
        # packed batches need plain full-attention layers (a 4-D mask over every column)
        # and positions from position_ids (ALiBi builds its bias from a 2-D mask); the
        # prefix run once is exact without dropout (one mask per row otherwise)
        _learned_logits_trainer(
            packed=full_attention(model.config)
            and "position_ids" in forward_args
            and not getattr(model.config, "alibi", False),
            share_prefix=recipe.dropout == 0 and not has_dropout(model),
        )
        if "logits_to_keep" in forward_args
        else Trainer
    )
    with tempfile.TemporaryDirectory(prefix="upstream-train-") as tmp:
        args = TrainingArguments(
            output_dir=str(Path(tmp) / "trainer"),
            use_cpu=True,
            num_train_epochs=recipe.epochs,
            per_device_train_batch_size=recipe.batch_size,
            learning_rate=recipe.learning_rate,
            lr_scheduler_type="constant",  # too few steps for warm-up or decay to matter
            warmup_steps=0,
            weight_decay=0.0,
            seed=recipe.seed,
            data_seed=recipe.seed,
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="no",
            eval_strategy="no",
            report_to=[],
            disable_tqdm=True,
            remove_unused_columns=False,
            label_names=["labels"],
            dataloader_pin_memory=False,
            dataloader_num_workers=0,
            bf16=precision == "bfloat16",
        )
        trainer = trainer_class(
            model=peft_model,
            args=args,
            train_dataset=[{"input_ids": e.input_ids, "labels": e.labels} for e in examples],
            data_collator=_collate(pad_id),
            callbacks=[Progress()],
        )
        trainer.remove_callback(PrinterCallback)  # it prints every log line to stdout
        trainer.train()
        steps = int(trainer.state.global_step)

        # The base is named by its directory (the revision hash), never the temp path.
        peft_model.peft_config["default"].base_model_name_or_path = model_dir.name
        saved = Path(tmp) / "adapter"
        # save_embedding_layers=False: the vocabulary is never resized here, and "auto"
        # would look the base up by name to check.
        peft_model.save_pretrained(str(saved), safe_serialization=True, save_embedding_layers=False)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in ADAPTER_FILES:  # and nothing else PEFT writes (a README model card)
            shutil.move(str(saved / name), str(out_dir / name))

    return TrainResult(
        steps=steps,
        epochs=recipe.epochs,
        examples=len(examples),
        seconds=time.perf_counter() - started,
        losses=losses,
        first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
        trainable_parameters=trainable,
        replayed=replayed_count,
        precision=precision,
    )


def _learned_logits_trainer(packed: bool = True, share_prefix: bool = True) -> Any:
    """A Trainer whose loss computes the logits only where a token is learned.

    The output layer and its softmax over the whole vocabulary (49k for SmolLM2) are a
    fifth of a training step when run at every position, and most positions (the prompt,
    the template's text, padding) carry no label. The loss is the same cross-entropy,
    summed over the labelled tokens and divided by their count (`num_items_in_batch`,
    as transformers' own causal-LM loss does).

    `packed` (`_packed_forward`): the batch runs as one sequence without padding, the
    columns every row begins with (the chat template's system prompt: 24 of SmolLM2's
    ~58 tokens an example) once if `share_prefix`, and the logits only of the tokens
    whose next token is learned. Otherwise the padded batch runs as it is, with the
    logits of every position where some row's next token is learned.
    """
    import torch
    from transformers import Trainer

    class LearnedLogitsTrainer(Trainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            targets = inputs["labels"][:, 1:]  # (batch, seq - 1): the token each predicts
            ids, mask = inputs["input_ids"], inputs["attention_mask"]
            keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(1)  # (k,) positions
            first = int(keep[0]) if len(keep) else 0  # the first kept logit
            shared = shared_columns(ids, mask, first) if packed and share_prefix else 0
            if packed and packing_pays(mask, shared, getattr(model.config, "hidden_size", 0)):
                outputs, picked = _packed_forward(model, ids, mask, targets, shared)
            else:
                outputs = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep)
                picked = targets[:, keep]  # (batch, k)
            logits = outputs.logits.float()  # (batch, k, vocab), or (1, k, vocab) packed
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                picked.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            count = (
                num_items_in_batch if num_items_in_batch is not None else (picked != IGNORE).sum()
            )
            loss = loss / count
            return (loss, outputs) if return_outputs else loss

    return LearnedLogitsTrainer


def has_dropout(model: Any) -> bool:
    """Whether the base model drops anything in training (its own dropout layers, or an
    attention dropout in its config), beside the recipe's LoRA dropout."""
    import torch

    config = model.config
    attention = (getattr(config, k, 0) for k in ("attention_dropout", "attn_pdrop"))
    if any(isinstance(p, (int, float)) and p > 0 for p in attention):
        return True
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def packing_pays(mask: Any, shared: int, hidden: int) -> bool:
    """Whether the packed sequence costs less than the padded batch.

    Per layer and token, the products cost about 24 h^2 (h the hidden size) and
    attention about 4 h per key it sees. A packed token sees every column of the
    sequence (the mask hides most, but they are computed), a padded one its row's
    width; so long examples, where attention over the whole packed sequence would
    outgrow the padding saved, stay padded.
    """
    rows, width = mask.shape
    packed = shared + int(mask.sum()) - rows * shared  # the shared columns once
    return packed * (6 * hidden + packed) < rows * width * (6 * hidden + width)


def shared_columns(ids: Any, mask: Any, limit: int) -> int:
    """How many leading columns every row has alike (same token, not padding), at most `limit`.

    `limit` is the first position whose logits are kept: the shared columns are run
    once for all rows, so none of them may carry a row's own loss.
    """
    same = (ids == ids[:1]).all(dim=0) & (mask == 1).all(dim=0)  # (seq,)
    differs = (~same).nonzero()
    first = int(differs[0]) if len(differs) else int(ids.shape[1])
    return min(first, limit)


def _packed_forward(model: Any, ids: Any, mask: Any, targets: Any, shared: int) -> Any:
    """The model on a right-padded batch laid out as one sequence; (outputs, targets kept).

    The sequence is the `shared` columns every row begins with, once, then each row's
    other tokens without their padding. Each token keeps its own position and sees
    what it sees in the padded batch: the shared columns and its own row's tokens
    before it (a 4-D mask; a masked key's weight is exactly 0). So every logit and
    gradient is the same, to float32 rounding (the products run on other row counts),
    while the products run on the tokens that exist, the shared ones once. The logits
    are asked only at the tokens whose next token is learned; the targets returned are
    those tokens' next tokens, in the same order.
    """
    import torch

    lengths = mask.sum(dim=1).tolist()  # each row's tokens: padding is on the right
    pieces, positions, owner = [ids[0, :shared]], [torch.arange(shared)], [-1] * shared
    keep, picked = [], []
    start = shared
    for r, n in enumerate(lengths):
        pieces.append(ids[r, shared:n])
        positions.append(torch.arange(shared, n))
        owner += [r] * (n - shared)
        predicted = targets[r, shared : n - 1]  # what the row's own positions predict
        learned = predicted != IGNORE
        keep.append(start + learned.nonzero().squeeze(1))
        picked.append(predicted[learned])
        start += n - shared
    seq = torch.cat(pieces).unsqueeze(0)  # (1, t)
    inputs = {
        "input_ids": seq,
        "position_ids": torch.cat(positions).unsqueeze(0),  # (1, t)
        "logits_to_keep": torch.cat(keep),
    }
    own = [n - shared for n in lengths]
    config = model.config
    # a model of one config whose attention is SDPA: its layers read that config's name
    plain = config._attn_implementation == "sdpa" and not getattr(config, "sub_configs", None)
    if plain and segments_pay(shared, own):
        layout = row_layout(shared, own)
        config._attn_implementation = _rows_attention()  # this forward only; backward
        try:  # runs the graph it recorded
            outputs = model(**inputs, attention_mask=layout.mask, upstream_rows=layout)
        finally:
            config._attn_implementation = "sdpa"
    else:
        whose = torch.tensor(owner)  # (t,): the row of each token, -1 for the shared ones
        causal = torch.ones(len(owner), len(owner), dtype=torch.bool).tril()  # (t, t)
        visible = causal & ((whose[None] == -1) | (whose[None] == whose[:, None]))
        dtype = model.get_input_embeddings().weight.dtype
        bias = torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, torch.finfo(dtype).min)
        # (1, 1, t, t): 0 where a token may look, else min
        outputs = model(**inputs, attention_mask=bias[None, None])
    return outputs, torch.cat(picked).unsqueeze(0)  # (1, k)


@dataclass(frozen=True)
class RowLayout:
    """Where each row of a packed sequence reads its queries and keys (`row_layout`).

    Segment 0 is the shared prefix if there is one (its own keys, causal), then one
    segment per row: its own tokens as queries, the prefix and its own tokens as keys.
    `mask[s, 0, i, j]`: query i of segment s sees key j (a padding query sees one key,
    so that no softmax is empty). `back[p]`: where token p's output is in the segments'
    outputs laid end to end (segments x queries)."""

    queries: Any  # (segments, n): positions in the packed sequence
    keys: Any  # (segments, m)
    mask: Any  # (segments, 1, n, m) bool
    back: Any  # (t,)


def segments_pay(shared: int, own: Sequence[int]) -> bool:
    """Whether attention by segments (`row_layout`) computes fewer scores than attention
    over the whole packed sequence of `shared` columns and rows of `own[r]` tokens each.

    Over the whole sequence every query meets every key (t x t) and the mask throws most
    away: with 8 rows of ~35 tokens after a 24-token prefix, 8 of 9 scores. By segments
    it is about segments x n x m, here a fifth; but a long row among short ones pads
    every segment to its length.
    """
    segments, n, m = _segment_shape(shared, own)
    t = shared + sum(own)
    return segments * n * m < t * t


def _segment_shape(shared: int, own: Sequence[int]) -> tuple[int, int, int]:
    """(segments, queries, keys) of each segment in `row_layout`, padded to the widest."""
    return len(own) + (1 if shared else 0), max([shared, *own]), shared + max(own, default=0)


def row_layout(shared: int, own: Sequence[int]) -> RowLayout:
    """The layout of a packed sequence of `shared` columns, then rows of `own[r]` tokens."""
    import torch

    spans: list[tuple[list[int], list[int]]] = []  # (query positions, key positions)
    prefix = list(range(shared))
    if shared:
        spans.append((prefix, prefix))
    start = shared
    for n in own:
        mine = list(range(start, start + n))
        spans.append((mine, prefix + mine))
        start += n
    segments, n, m = _segment_shape(shared, own)
    queries = torch.zeros(segments, n, dtype=torch.long)
    keys = torch.zeros(segments, m, dtype=torch.long)
    mask = torch.zeros(segments, 1, n, m, dtype=torch.bool)
    back = torch.empty(start, dtype=torch.long)  # start: now the packed length t
    for s, (q, k) in enumerate(spans):
        queries[s, : len(q)] = torch.tensor(q)
        keys[s, : len(k)] = torch.tensor(k)
        # every key of a segment comes before its queries' own, in order: causal is <=
        mask[s, 0, : len(q), : len(k)] = keys[s, None, : len(k)] <= queries[s, : len(q), None]
        mask[s, 0, len(q) :, 0] = True
        back[torch.tensor(q, dtype=torch.long)] = s * n + torch.arange(len(q))
    return RowLayout(queries, keys, mask, back)


@functools.cache
def _rows_attention() -> str:
    """Register `transformers`' attention by segments (`RowLayout`); its name.

    It gathers each segment's queries, keys and values, runs `transformers`' own SDPA
    attention on them as a batch (the same scaling, dropout and grouped heads), and puts
    every token's output back in its place; autograd carries the gradients through the
    gathers. A forward without a layout is plain SDPA.
    """
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def attention(
        module: Any,
        query: Any,
        key: Any,
        value: Any,
        attention_mask: Any,
        upstream_rows: RowLayout | None = None,
        **kwargs: Any,
    ) -> Any:
        if upstream_rows is None:
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
        rows = upstream_rows
        segments, n = rows.queries.shape
        m = rows.keys.shape[1]

        def gather(x: Any, at: Any, width: int) -> Any:  # (1, h, t, d) -> (segments, h, w, d)
            picked = x[0].index_select(1, at.reshape(-1))  # a gradient adds up, unsorted
            return picked.view(x.shape[1], segments, width, x.shape[-1]).transpose(0, 1)

        q = gather(query, rows.queries, n)
        k, v = gather(key, rows.keys, m), gather(value, rows.keys, m)
        out, _ = sdpa_attention_forward(module, q, k, v, rows.mask, **kwargs)  # (s, n, h, d)
        flat = out.reshape(segments * n, *out.shape[2:])
        return flat.index_select(0, rows.back).unsqueeze(0), None  # (1, t, h, d)

    name = "upstream_rows"
    AttentionInterface.register(name, attention)
    return name


def fuse_lora_products(model: Any) -> int:
    """Give every plain LoRA linear layer of `model` `_lora_linear` as its forward; how many.

    peft adds a layer's LoRA term as `result + lora_B(lora_A(x)) * scaling`, and
    autograd runs each product of that apart. A product with an inner size of the rank
    (8) is slow in MKL when it writes a new tensor: on 2 cores, 276 x 8 by 8 x 576 took
    250 us, against 65 us when it adds into an existing one (beta 1); with the adds and
    scalings around them, the LoRA terms were a fifth of a training step. `LoraLinear`
    computes the same forward and gradients with the rank-sized products added into
    the base's. Layers with dropout, a LoRA variant (DoRA), several adapters, a bias in
    B or a base that is trained keep peft's own forward.
    """
    import torch
    from peft.tuners.lora.layer import Linear

    fused = 0
    for module in model.modules():
        if type(module) is not Linear or module.lora_variant or list(module.lora_A) != ["default"]:
            continue
        base = module.base_layer
        frozen = [t for t in (base.weight, base.bias) if t is not None]
        plain = (
            type(base) is torch.nn.Linear  # not a Conv1D (GPT-2), whose weight is (in, out)
            and not module.fan_in_fan_out
            and module.lora_B["default"].bias is None
            and isinstance(module.lora_dropout["default"], torch.nn.Identity)
            and not any(t.requires_grad for t in frozen)
            and base.weight.dtype == torch.float32
        )
        if plain:
            products = _packed_products(base.weight)
            module.forward = functools.partial(_lora_linear, module, module.forward, products)  # type: ignore[method-assign]
            fused += 1
    return fused


def fuse_frozen_head(model: Any) -> bool:
    """Give the output layer its products with its weight prepacked (`_packed_products`),
    where it is a frozen float32 `nn.Linear` without bias; whether it now has them.

    The head is not trained, but its products are a tenth of a training step: the logits
    of the learned tokens (130 x 576 by 576 x 49,152 for SmolLM2's packed batch) and
    their gradient back to the hidden states. MKL ran them in 58 and 45 ms, oneDNN in
    34 and 35, with the same results to 3e-6. The two copies take 0.23 GB for SmolLM2.
    """
    import torch

    head = model.get_output_embeddings()
    if (
        type(head) is not torch.nn.Linear
        or head.bias is not None
        or head.weight.requires_grad
        or head.weight.dtype != torch.float32
    ):
        return False
    products = _packed_products(head.weight)
    if products is None:
        return False
    head.forward = functools.partial(_frozen_linear, head, products)
    return True


def _frozen_linear(layer: Any, products: tuple[Any, Any], x: Any) -> Any:
    """`layer(x)` through its prepacked `products` (its own forward under autocast)."""
    import torch

    if torch.is_autocast_enabled(x.device.type):
        return torch.nn.functional.linear(x, layer.weight)
    out = _frozen_function().apply(x.reshape(-1, x.shape[-1]), products)
    return out.view(*x.shape[:-1], out.shape[-1])


@functools.cache
def _frozen_function() -> Any:
    import torch

    from upstream.engines import packed

    class FrozenLinear(torch.autograd.Function):
        """y = x W^T, W frozen and prepacked with W^T (`_packed_products`); the gradient for x."""

        @staticmethod
        def forward(ctx: Any, x: Any, products: Any) -> Any:
            ctx.products = products
            return packed.product(x, products[0], None)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return packed.product(grad.contiguous(), ctx.products[1], None), None

    return FrozenLinear


def _packed_products(weight: Any) -> tuple[Any, Any] | None:
    """A frozen weight W (out, in) prepacked for oneDNN twice: as W for the forward
    product x Wᵀ, and as Wᵀ for the input gradient g W; None where oneDNN is missing.

    MKL's sgemm, which `nn.Linear` and `@` use, ran these training shapes (a packed batch
    of 500-1,500 tokens by SmolLM2's 576 x 1536 projections) at 86-196 GFLOP/s on the
    2-core AMD EPYC of docs/benchmarks.md; oneDNN with the weights reordered once, at
    181-216 (`engines/packed.py`, the same float32 products for generation). The two
    copies cost twice the projections' float32 size (0.86 GB for SmolLM2) while the
    adapter trains; they go with the model.
    """
    import torch

    from upstream.engines import packed

    if not packed.available():
        return None
    with torch.no_grad():
        w = weight.detach()
        return packed.pack(w), packed.pack(w.t().contiguous())


def _lora_linear(
    layer: Any,
    peft_forward: Any,
    products: tuple[Any, Any] | None,
    x: Any,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """A plain LoRA layer's output, base(x) + scaling * B(A(x)), through `LoraLinear`
    (peft's own forward when the adapter is off or merged, or under autocast); the base's
    products with its `products` (`_packed_products`) where there are some."""
    import torch

    if (
        layer.disable_adapters
        or layer.merged
        or args
        or kwargs
        or torch.is_autocast_enabled(x.device.type)
    ):
        return peft_forward(x, *args, **kwargs)
    base = layer.base_layer
    flat = x.reshape(-1, x.shape[-1])  # (tokens, in)
    out = _lora_function().apply(
        flat,
        base.weight,  # (out, in), frozen
        base.bias,
        layer.lora_A["default"].weight,  # (rank, in)
        layer.lora_B["default"].weight,  # (out, rank)
        float(layer.scaling["default"]),
        products,
    )
    return out.view(*x.shape[:-1], out.shape[-1])


@functools.cache
def _lora_function() -> Any:
    import torch

    from upstream.engines import packed

    class LoraLinear(torch.autograd.Function):
        """y = x W^T + b + s (x A^T) B^T, W and b frozen; gradients for x, A and B.
        `products`: W and W^T prepacked for oneDNN (`_packed_products`), or None."""

        @staticmethod
        def forward(
            ctx: Any, x: Any, w: Any, b: Any, a: Any, lb: Any, s: float, products: Any
        ) -> Any:
            low = x @ a.t()  # (tokens, rank)
            if products is None:
                y = torch.nn.functional.linear(x, w, b)  # (tokens, out)
            else:
                y = packed.product(x, products[0], b)
            y.addmm_(low, lb.t(), alpha=s)
            ctx.save_for_backward(x, w, a, lb, low)
            ctx.scaling = s
            ctx.products = products
            return y

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            x, w, a, lb, low = ctx.saved_tensors
            s = ctx.scaling
            # (tokens, rank), before the scaling; B^T laid out (rank, out), where MKL runs
            # this product 2x faster (110 against 264 us for 290 x 1536 by 1536 x 8)
            grad_low = grad @ lb.t().contiguous().t()
            grad_x = None
            if ctx.needs_input_grad[0]:
                if ctx.products is None:
                    grad_x = grad @ w  # (tokens, in)
                else:
                    grad_x = packed.product(grad.contiguous(), ctx.products[1], None)
                grad_x.addmm_(grad_low, a, alpha=s)
            grad_a = (grad_low.t() @ x).mul_(s)  # (rank, in)
            grad_b = (low.t() @ grad).mul_(s).t()  # (out, rank)
            return grad_x, None, None, grad_a, grad_b, None, None

    return LoraLinear


REPLAY_PROMPTS = Path(__file__).parent / "data" / "replay_prompts.jsonl"


def replay_prompts() -> list[str]:
    """The pool of ordinary prompts whose base answers are replayed (none is a guard case)."""
    lines = REPLAY_PROMPTS.read_text("utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]


def replay_conversations(
    model_dir: Path, n: int, max_new_tokens: int, seed: int = 0, answer: Answer | None = None
) -> list[Conversation]:
    """The base's own greedy answers to `n` prompts of the pool (at most all), drawn by `seed`.

    Greedy, so the same base and seed always replay the same answers; an answer cut at
    `max_new_tokens` is marked incomplete and is learned without its end-of-turn token.
    `answer` gives them (a hub passes its cached generation); by default the base in
    `model_dir` is loaded and generates them.
    """
    import random

    pool = replay_prompts()
    prompts = random.Random(seed).sample(pool, min(max(0, n), len(pool)))
    if not prompts:
        return []
    got = (answer or functools.partial(_answer, model_dir))(prompts, max_new_tokens)
    return [
        Conversation(
            [{"role": "user", "content": p}, {"role": "assistant", "content": text.strip()}],
            complete=tokens < max_new_tokens,
        )
        for p, (text, tokens) in zip(prompts, got, strict=True)
        if text.strip()
    ]


def _answer(model_dir: Path, prompts: Sequence[str], max_new_tokens: int) -> list[tuple[str, int]]:
    """The greedy answers of the base in `model_dir`, loaded for this call alone."""
    from upstream.engines.hf import HFEngine, load_from_dir

    engine = HFEngine(load_from_dir(model_dir))  # batched greedy: the same answers as one by one
    results = engine.generate(
        [GenRequest.from_prompt(p, max_new_tokens=max_new_tokens) for p in prompts]
    )
    return [(r.text, r.completion_tokens) for r in results]
