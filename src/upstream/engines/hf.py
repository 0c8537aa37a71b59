"""The transformers engine: greedy, batched generation from a revision in the blob store.

Batches are built from requests of similar prompt length (less padding) and padded on
the left, so every sequence's new tokens start at the same position. Each sequence
stops at its EOS token or a stop string, or after `max_new_tokens`. Greedy decoding in
float32 makes a batched result equal to the one-by-one result, token for token (a
test holds this on the tiny model and on SmolLM2).

A request's `until` (see engines.base) is asked each time a new token holds whitespace,
with the text so far: a row whose verdict is known stops there. Text is decoded without
the tokenizer's "clean-up" of spaces before punctuation, so the text of a row stopped
early is exactly the beginning of the text it would have had (clean-up would turn
"8 ." into "8." after the fact). Rows with stop strings run on: a stop string that ends
later can cut the text before a point already judged.

Loaded models are kept in a small per-process LRU cache, keyed by the revision and its
adapters, so repeated calls do not reload weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from upstream.engines.base import (
    MAX_PROMPT_CHARS,
    GenRequest,
    GenResult,
    ResultFn,
    cut_at_stop,
)
from upstream.engines.memory import keep_freed_memory
from upstream.errors import InvalidInput

if TYPE_CHECKING:
    from upstream.db.schema import Revision
    from upstream.hub import Hub

# bump when a change could alter generated text; hf-4: decoded without space clean-up
ENGINE_VERSION = "hf-4"
# Rows decoded together; larger is faster on CPU (benchmarks/fastgen.py). The lean loop
# takes up to DEFAULT_BATCH_SIZE rows where their keys and values fit in KV_BUDGET_BYTES,
# never fewer than BASE_BATCH_SIZE; `generate` takes BASE_BATCH_SIZE (it pads every row).
DEFAULT_BATCH_SIZE = 128
BASE_BATCH_SIZE = 64
KV_BUDGET_BYTES = 2 * 1024**3


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel (or a PeftModel around one)
    tokenizer: Any
    key: tuple[str, ...]  # (revision hash, adapter paths...)
    _spaced: frozenset[int] | None = None

    def spaced_tokens(self) -> frozenset[int]:
        """Ids of the tokens whose text holds whitespace: after one of them, a text being
        generated has a new stable prefix (checks.stable_prefix) worth judging."""
        if self._spaced is None:
            pieces = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            # byte-level BPE writes a space "Ġ", a newline "Ċ", a tab "ĉ"; SentencePiece
            # a space "▁". A token missed here only delays the stop to the next one.
            marks = ("Ġ", "Ċ", "ĉ", "č", "▁")
            self._spaced = frozenset(
                i
                for i, piece in enumerate(pieces)
                if piece and (any(m in piece for m in marks) or any(c.isspace() for c in piece))
            )
        return self._spaced


_cache: OrderedDict[tuple[str, ...], LoadedModel] = OrderedDict()
_cache_lock = threading.Lock()


def load_model(
    hub: Hub, revision: Revision, adapters: Sequence[Path] = (), cache_size: int | None = None
) -> LoadedModel:
    """The revision (with LoRA adapters applied), from the cache or loaded from blobs."""
    bf16 = uses_bf16(hub)
    key = (revision.hash, *(str(Path(a).resolve()) for a in adapters), *(["bf16"] if bf16 else []))
    size = hub.settings.model_cache_size if cache_size is None else cache_size
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        loaded = load_from_dir(hub.revision_dir(revision), adapters, bf16)
        loaded.key = key
        if size > 0:
            _cache[key] = loaded
            while len(_cache) > size:
                _cache.popitem(last=False)
        return loaded


def uses_bf16(hub: Hub) -> bool:
    """Whether this hub's generation runs bfloat16 products (its setting, where the CPU
    has bfloat16 units)."""
    if not hub.settings.bf16_products:
        return False
    from upstream.engines.packed import bf16_supported  # imports torch

    return bf16_supported()


def engine_version(hub: Hub) -> str:
    """What generated outputs depend on of the engine: its version and its precision."""
    return ENGINE_VERSION + ("+bf16" if uses_bf16(hub) else "")


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def load_from_dir(
    model_dir: Path, adapters: Sequence[Path] = (), bf16: bool = False
) -> LoadedModel:
    """Load a safetensors model directory (never pickle, never remote code); `bf16`
    packs the weights for bfloat16 products (see engines.packed)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, local_files_only=True, trust_remote_code=False
    )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_weights(model_dir)
    for adapter in adapters:
        model = _apply_adapter(model, Path(adapter))
    model.eval()
    import torch

    from upstream.engines.packed import pack_linears

    # generation only from here: faster small-batch products on CPU
    pack_linears(model, torch.bfloat16 if bf16 else torch.float32)
    return LoadedModel(model=model, tokenizer=tokenizer, key=(str(model_dir),))


def load_weights(model_dir: Path) -> Any:
    """The model of a safetensors directory in float32: never pickle, never remote code."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    keep_freed_memory()  # the generation or training that follows reuses its pages
    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=torch.float32,
        local_files_only=True,
        trust_remote_code=False,
        use_safetensors=True,
    )


def _apply_adapter(model: Any, adapter_dir: Path) -> Any:
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").exists():
        raise InvalidInput(f"{adapter_dir}: not a PEFT adapter (no adapter_config.json)")
    if not (adapter_dir / "adapter_model.safetensors").exists():
        raise InvalidInput(
            f"{adapter_dir}: adapter weights must be adapter_model.safetensors (pickle refused)"
        )
    # Merged in place so several adapters stack and generation runs at base speed.
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    except (ValueError, RuntimeError, KeyError) as e:
        arch = type(model).__name__
        raise InvalidInput(f"{adapter_dir}: this adapter does not fit the base {arch}: {e}") from e
    import torch

    # The merge writes into every adapted weight. On the memory-mapped file's pages each
    # write faults a private copy of its page first (SmolLM2: 1.1 s to merge a LoRA);
    # copied into the process first, the weights it writes take 0.1 s and the merge 0.25 s.
    # (The untouched tensors are owned later, by `pack_linears`.)
    with torch.no_grad():
        for module in peft_model.modules():
            base = getattr(module, "base_layer", None)
            if base is not None and hasattr(module, "merge"):
                for tensor in (getattr(base, "weight", None), getattr(base, "bias", None)):
                    if tensor is not None:
                        tensor.data = tensor.data.clone()
    return peft_model.merge_and_unload()


class HFEngine:
    """Greedy batched generation with a loaded transformers model."""

    def __init__(
        self,
        loaded: LoadedModel,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ):
        self.loaded = loaded
        self.batch_size = max(1, batch_size)
        self.max_prompt_chars = max_prompt_chars
        self.name = f"hf:{loaded.key[0][:12]}"
        self._fastgen: bool | None = None

    @classmethod
    def for_revision(
        cls,
        hub: Hub,
        revision: Revision,
        adapters: Sequence[Path] = (),
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> HFEngine:
        return cls(load_model(hub, revision, adapters), batch_size, hub.settings.max_prompt_chars)

    def check(self, request: GenRequest) -> None:
        """Raise what `generate` would raise for this request alone (limits, template)."""
        request.validate(self.max_prompt_chars)
        self.encode(request)

    def encode(self, request: GenRequest) -> list[int]:
        """Prompt token ids: the chat template applied, ready for the assistant's turn."""
        tok = self.loaded.tokenizer
        if tok.chat_template:
            ids = tok.apply_chat_template(
                request.messages, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        else:  # a base model without a template: plain concatenated text
            ids = tok("\n".join(m["content"] for m in request.messages))["input_ids"]
        return list(ids)

    def generate(
        self, requests: Sequence[GenRequest], on_result: ResultFn | None = None
    ) -> list[GenResult]:
        for r in requests:
            r.validate(self.max_prompt_chars)
        encoded = [self.encode(r) for r in requests]
        results: list[GenResult | None] = [None] * len(requests)

        def finished(i: int, result: GenResult) -> None:
            results[i] = result
            if on_result is not None:
                on_result(i, result)

        if self.use_fastgen:
            # One call per generation setting: the lean loop refills its batch as rows
            # finish, so it wants every prompt of a setting at once.
            groups: dict[str, list[int]] = {}
            for i, r in enumerate(requests):
                groups.setdefault(r.settings_key(), []).append(i)
            for idx in groups.values():
                self._generate_fast(
                    [encoded[i] for i in idx], [requests[i] for i in idx], idx, finished
                )
        else:
            for batch in plan_batches(requests, encoded, min(self.batch_size, BASE_BATCH_SIZE)):
                outs = self._generate_batch([encoded[i] for i in batch], requests[batch[0]])
                for i, result in zip(batch, outs, strict=True):
                    finished(i, result)
        return [r for r in results if r is not None]

    @property
    def use_fastgen(self) -> bool:
        """Whether the lean decoding loop (same tokens, faster) can run this model."""
        from upstream.engines import fastgen

        if self._fastgen is None:
            self._fastgen = fastgen.supports(self.loaded.model)
        return self._fastgen

    def fast_rows(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
        """Rows the lean loop decodes together for `prompts`: at most `batch_size`, as many
        as have room for their keys and values in KV_BUDGET_BYTES, at least BASE_BATCH_SIZE."""
        from upstream.engines import fastgen

        columns = max(len(p) for p in prompts) + max_new_tokens
        fit = fastgen.rows_within(self.loaded.model, columns, KV_BUDGET_BYTES)
        return min(self.batch_size, max(BASE_BATCH_SIZE, fit))

    def _generate_fast(
        self,
        prompts: list[list[int]],
        requests: list[GenRequest],
        indices: list[int],
        on_result: ResultFn,
    ) -> None:
        """Generate `prompts` (all of one setting); `on_result(indices[k], ...)` for each."""
        from upstream.engines.fastgen import greedy_generate

        tok, model = self.loaded.tokenizer, self.loaded.model
        eos = _eos_ids(model, tok)
        settings = requests[0]
        stop = settings.stop
        untils = [None if stop else r.until for r in requests]
        spaced = self.loaded.spaced_tokens() if any(untils) else frozenset()
        at_verdict: set[int] = set()

        def stop_check(i: int, tokens: list[int]) -> bool:
            if stop and any(s in _decode(tok, tokens[-16:]) for s in stop):
                return True
            until = untils[i]
            if until is not None and tokens[-1] in spaced and until(_decode(tok, tokens)):
                at_verdict.add(i)
                return True
            return False

        def done(i: int, ids: list[int]) -> None:
            # the loop leaves EOS out, so a row shorter than the cap ended at EOS, a stop
            # string or its verdict
            ended = len(ids) < settings.max_new_tokens
            result = _result(tok, ids, len(prompts[i]), stop, ended)
            if ended and i in at_verdict:
                result.finish_reason = "verdict"
            on_result(indices[i], result)

        greedy_generate(
            model,
            prompts,
            settings.max_new_tokens,
            eos,
            tok.pad_token_id,
            stop_check if stop or any(untils) else None,
            batch_size=self.fast_rows(prompts, settings.max_new_tokens),
            on_done=done,
        )

    def _generate_batch(self, prompts: list[list[int]], settings: GenRequest) -> list[GenResult]:
        import torch

        tok, model = self.loaded.tokenizer, self.loaded.model
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (batch, seq)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        eos = _eos_ids(model, tok)
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=False,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                stop_strings=list(settings.stop) or None,
                tokenizer=tok if settings.stop else None,
                temperature=None,
                top_p=None,
                top_k=None,
            )
        results = []
        for row, prompt in zip(out[:, width:].tolist(), prompts, strict=True):
            ids, hit_eos = _until_eos(row, eos)
            result = _result(tok, ids, len(prompt), settings.stop, hit_eos)
            while result.finish_reason == "stop" and ids and ids[-1] == pad:
                ids.pop()  # padding after a stop string
            result.completion_tokens = len(ids)
            results.append(result)
        return results


def _result(
    tok: Any, ids: list[int], prompt_tokens: int, stop: Sequence[str], ended: bool
) -> GenResult:
    """Decode generated ids; `ended` says EOS (or a stop) came before the token cap."""
    text, hit_stop = cut_at_stop(_decode(tok, ids), stop)
    reason: Literal["stop", "length"] = "stop" if ended or hit_stop else "length"
    return GenResult(
        text=text,
        finish_reason=reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(ids),
        token_ids=ids,
    )


def _decode(tok: Any, ids: list[int]) -> str:
    return str(tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))


def plan_batches(
    requests: Sequence[GenRequest], encoded: Sequence[list[int]], batch_size: int
) -> list[list[int]]:
    """Group request indices into batches of equal settings and similar prompt length."""
    order = sorted(
        range(len(requests)), key=lambda i: (requests[i].settings_key(), len(encoded[i]))
    )
    batches: list[list[int]] = []
    for i in order:
        if (
            batches
            and len(batches[-1]) < batch_size
            and requests[batches[-1][0]].settings_key() == requests[i].settings_key()
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _eos_ids(model: Any, tok: Any) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    return ids


def _until_eos(row: list[int], eos: list[int]) -> tuple[list[int], bool]:
    for n, t in enumerate(row):
        if t in eos:
            return row[:n], True
    return row, False
