"""A lean greedy decoding loop for a batch of chat prompts (transformers models, CPU first).

`model.generate` is general; evaluation needs one thing from it, greedy decoding of many
chat prompts, and pays for the rest. This loop calls the model's forward directly and
does less work for the same tokens:

- **Shared prefix once.** Chat prompts of one batch begin with the same tokens (the
  template's system prompt and role markers). That prefix is run once, with batch size
  1, and its key/value cache copied to every row; only the rest of each prompt is run
  per row.
- **Finished rows leave.** A row that reaches EOS, its token limit or a stop string is
  removed from the batch and from the cache, so each step costs what the unfinished
  rows need (`generate` keeps computing padding for them until the last one ends).
- **Little per-step Python.** No logits processors, no stopping criteria objects: one
  forward, one argmax, one `tolist()` per step.

The sequence layout of a batch is `[shared prefix][padding][own suffix][new tokens]`:
the padding sits between the prefix and each row's suffix, hidden by the attention mask,
and the position ids count only real tokens, so every row sees exactly the positions
and keys it would see alone. Greedy float32 decoding then gives the tokens of
`HFEngine` one by one (tests hold this on tiny models of several families; the
benchmark `benchmarks/fastgen.py` counts matches on SmolLM2).

`supports(model)` says whether a model fits these assumptions (a decoder with a plain
full-attention `DynamicCache`, position ids and a 2D padding mask); the engine falls
back to `generate` for the others.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

StopCheck = Callable[[int, list[int]], bool]  # (prompt index, tokens so far) -> stop now
DEFAULT_BATCH_SIZE = 32
_ATTENTION = ("sdpa", "eager")  # masks built from a 2D padding mask; others are not tested


def supports(model: Any) -> bool:
    """Whether `greedy_generate` can run `model` (else use `model.generate`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "_attn_implementation", None) not in _ATTENTION:
        return False
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    if not {"input_ids", "attention_mask", "position_ids", "cache", "use_cache"} <= set(params):
        return False
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # an architecture whose cache cannot be built from its config
        return False
    # Sliding-window, linear-attention or other layer kinds count padding or positions
    # differently: only plain full-attention layers keep the layout above exact.
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def greedy_generate(
    model: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    stop_check: StopCheck | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts, one list per prompt, in prompt order.

    Each continuation ends before the first EOS token (which is not included), after
    `max_new_tokens` tokens, or with the token after which `stop_check(index, tokens)`
    returned True (that token included; `index` is the prompt's position in `prompts`).
    Prompts are run in batches of `batch_size`, grouped by length.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens}: must be at least 1")
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), prompts[i]))
    size = max(1, batch_size)
    results: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), size):
        batch = order[start : start + size]
        outs = _generate_batch(
            model,
            [prompts[i] for i in batch],
            batch,
            max_new_tokens,
            set(eos_ids),
            pad_id,
            stop_check,
        )
        for i, out in zip(batch, outs, strict=True):
            results[i] = out
    return results


def common_prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all prompts share."""
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n


def _generate_batch(
    model: Any,
    prompts: list[list[int]],
    indices: list[int],
    max_new_tokens: int,
    eos: set[int],
    pad_id: int,
    stop_check: StopCheck | None,
) -> list[list[int]]:
    import torch
    from transformers import DynamicCache

    rows = len(prompts)
    # Every row needs at least one token of its own: the last prompt token's logits
    # choose the first new token.
    shared = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
    suffixes = [p[shared:] for p in prompts]
    width = max(len(s) for s in suffixes)
    keep_logits = _logits_kwargs(model)
    cache = DynamicCache(config=model.config)

    with torch.inference_mode():
        if shared:
            model(
                input_ids=torch.tensor([prompts[0][:shared]]),  # (1, shared)
                position_ids=torch.arange(shared).unsqueeze(0),
                cache=cache,
                use_cache=True,
                **keep_logits,
            )
            cache.batch_repeat_interleave(rows)

        # (rows, shared + width + max_new_tokens): 1 where a key is a real token; the
        # generated tokens' columns are 1 and are revealed one step at a time.
        mask = torch.ones(rows, shared + width + max_new_tokens, dtype=torch.long)
        input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
        # Padding gets position 0 (never attended to); real tokens count on from the prefix.
        positions = torch.zeros(rows, width, dtype=torch.long)
        for r, s in enumerate(suffixes):
            pad = width - len(s)
            mask[r, shared : shared + pad] = 0
            input_ids[r, pad:] = torch.tensor(s)
            positions[r, pad:] = torch.arange(shared, shared + len(s))
        next_position = positions[:, -1:] + 1  # (rows, 1)

        out = model(
            input_ids=input_ids,
            attention_mask=mask[:, : shared + width],
            position_ids=positions,
            cache=cache,
            use_cache=True,
            **keep_logits,
        )
        seen = shared + width  # keys in the cache
        live = list(range(rows))  # batch row -> prompt row, for the rows still running
        generated: list[list[int]] = [[] for _ in range(rows)]
        while True:
            tokens = out.logits[:, -1, :].argmax(dim=-1)  # (live,)
            finished = []
            for b, token in enumerate(tokens.tolist()):
                r = live[b]
                if token in eos:
                    finished.append(b)
                    continue
                generated[r].append(token)
                if len(generated[r]) >= max_new_tokens or (
                    stop_check is not None and stop_check(indices[r], generated[r])
                ):
                    finished.append(b)
            if len(finished) == len(live):
                break
            if finished:
                done = set(finished)
                kept = [b for b in range(len(live)) if b not in done]
                select = torch.tensor(kept)
                cache.batch_select_indices(select)
                mask = mask[select]
                next_position = next_position[select]
                tokens = tokens[select]
                live = [live[b] for b in kept]
            out = model(
                input_ids=tokens.unsqueeze(1),  # (live, 1)
                attention_mask=mask[:, : seen + 1],
                position_ids=next_position,
                cache=cache,
                use_cache=True,
            )
            seen += 1
            next_position = next_position + 1
    return generated


def _logits_kwargs(model: Any) -> dict[str, int]:
    """Ask for the last position's logits only, where the model allows it."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return {"logits_to_keep": 1}
    return {}
