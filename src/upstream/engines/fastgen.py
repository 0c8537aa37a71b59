"""A lean greedy decoding loop for many chat prompts (transformers models, CPU first).

`model.generate` is general; evaluation needs one thing from it, greedy decoding of many
chat prompts, and pays for the rest. This loop calls the model's forward directly and
does less work for the same tokens:

- **Shared prefix once.** Chat prompts begin with the same tokens (the template's
  system prompt and role markers). That prefix is run once, with batch size 1, and its
  keys and values copied into every row; only the rest of each prompt is run per row.
- **Finished rows leave, waiting prompts join.** A row that reaches EOS, its token
  limit or a stop string is removed from the batch and from the cache; when a quarter
  of the batch is free, the next prompts (shortest first) are run and join it. On a
  CPU a decoding step costs a fixed part (reading every weight, ~85 ms for SmolLM2 on
  2 cores) plus a part per row, so a batch kept full costs far less per token than one
  that runs on with a few long answers.
- **Like lengths together.** Joining prompts are prefilled in forwards of like length
  (`length_chunks`), and a prompt far longer than the running batch is wide waits for
  a batch of its own: every row carries as many cache columns as the widest, and each
  step reads them all.
- **Keys and values written in place.** A row's cache has room for the next columns, so
  a step writes its one new column instead of copying the whole cache into a new tensor
  as `transformers`' own layer does (5-7 % of a SmolLM2 step at 16 to 64 rows,
  `benchmarks/kv_cache.py`).
- **Little per-step Python.** No logits processors, no stopping-criteria objects: one
  forward, one argmax, one `tolist()` per step.

How rows share one cache: a row's cache columns hold its prompt's keys and values and
then its generated tokens', with unused columns anywhere before them, hidden by the
attention mask (False). Position ids count only a row's real tokens, so each row sees
exactly the positions and keys it would see alone. A decoding step's single query sees
every earlier column, so the order of past columns does not matter: a narrower batch
joins a wider one by gaining unused columns on the left, and columns no row uses any
more are dropped. Greedy float32 decoding then gives the tokens of `HFEngine` one by
one (tests hold this on tiny models of several families; `benchmarks/fastgen.py`
counts matches on SmolLM2).

`supports(model)` says whether a model fits these assumptions (a decoder whose cache is
plain full-attention `DynamicLayer`s, taking position ids and a 2D padding mask); the
engine falls back to `generate` for the others.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

StopCheck = Callable[[int, list[int]], bool]  # (prompt index, tokens so far) -> stop now
# (prompt index of each row, logits (rows, vocab)) -> next token of each row (rows,)
Choose = Callable[[list[int], "torch.Tensor"], "torch.Tensor"]
OnDone = Callable[[int, list[int]], None]  # (prompt index, its finished continuation)
DEFAULT_BATCH_SIZE = 32
_ATTENTION = ("sdpa", "eager")  # the implementations that build masks from a 2D mask
_FORWARD_ARGS = {"input_ids", "attention_mask", "position_ids", "cache", "use_cache"}
# Generation settings under which greedy `generate` would change or re-rank the logits
# (or not be greedy search at all), with the values that leave them alone.
_NEUTRAL_SETTINGS: dict[str, tuple[object, ...]] = {
    "num_beams": (None, 1),
    "repetition_penalty": (None, 1, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "guidance_scale": (None, 1, 1.0),
    "penalty_alpha": (None, 0, 0.0),
    "sequence_bias": (None,),
    "bad_words_ids": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "watermarking_config": (None,),
    "dola_layers": (None,),
    "prompt_lookup_num_tokens": (None,),
}


def supports(model: Any) -> bool:
    """Whether `greedy_generate` can run `model` (else use `model.generate`)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "_attn_implementation", None) not in _ATTENTION:
        return False
    settings = getattr(model, "generation_config", None)
    for name, neutral in _NEUTRAL_SETTINGS.items():
        if getattr(settings, name, None) not in neutral:
            return False
    try:
        params = inspect.signature(model.forward).parameters
    except Exception:  # no inspectable forward
        return False
    return set(params) >= _FORWARD_ARGS and full_attention(config)


def full_attention(config: Any) -> bool:
    """Whether every layer of the model's cache is a plain full-attention one.

    Sliding-window, linear-attention and other layer kinds count columns or keep state
    in ways a shared prefix (here and in training) would change; only these are exact.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a cache not buildable from the config
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def greedy_generate(
    model: Any,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    stop_check: StopCheck | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_done: OnDone | None = None,
) -> list[list[int]]:
    """Greedy continuations of token-id prompts, one list per prompt, in prompt order.

    A continuation ends before the first EOS token (not included), after
    `max_new_tokens` tokens, or with the token after which `stop_check(index, tokens)`
    returned True (that token included). `stop_check` is called after every new token
    but EOS, with the prompt's position in `prompts` and its tokens so far.
    At most `batch_size` prompts are decoded together; larger batches are faster on a
    CPU and hold more keys and values in memory. `on_done(index, tokens)` is called as
    each prompt's continuation is final, in the order they finish.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens {max_new_tokens}: must be at least 1")
    if not prompts:
        return []
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
    decoder = _Decoder(model, prompts, max_new_tokens, set(eos_ids), pad_id, stop_check, on_done)
    outputs = decoder.run(max(1, batch_size))
    return [outputs[i] for i in range(len(prompts))]


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


ROOM = 32  # columns a cache layer grows by beyond what it holds


def new_cache(config: Any) -> Any:
    """A `DynamicCache` for `config` whose layers append in place (`_room_layer`)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    room = _room_layer()
    cache.layers = [room() for _ in cache.layers]
    return cache


def rows_within(model: Any, columns: int, budget: int) -> int:
    """How many rows of `columns` cache columns (plus the room a layer keeps, and the
    eighth of unused columns the loop tolerates) hold their keys and values in `budget`
    bytes, for `model`'s layers, heads and dtype."""
    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    per_column = config.num_hidden_layers * 2 * heads * head_dim * element
    held = columns + columns // 8 + ROOM
    return max(1, budget // (per_column * held))


@functools.cache
def _room_layer() -> type:
    """The class of a full-attention cache layer that appends into room it keeps.

    `keys` and `values` are views of the first `length` columns of larger tensors; an
    update writes the new columns after them, and only when the room is used up are both
    copied into tensors with `ROOM` more columns. Setting `keys` or `values` (as the
    loop does when it drops rows or columns) replaces the storage with the tensor given,
    without room; the next update makes room again.
    """
    from transformers.cache_utils import DynamicLayer

    class RoomLayer(DynamicLayer):
        def __init__(self) -> None:
            # storage and how many of its columns are in use, for keys and for values
            self._kv: list[torch.Tensor | None] = [None, None]
            self._used = [0, 0]
            super().__init__()

        def _view(self, i: int) -> torch.Tensor | None:
            t = self._kv[i]
            return t if t is None or t.dim() != 4 else t[:, :, : self._used[i]]

        def _set(self, i: int, tensor: torch.Tensor | None) -> None:
            self._kv[i] = tensor
            self._used[i] = tensor.shape[-2] if tensor is not None and tensor.dim() == 4 else 0

        keys = property(lambda self: self._view(0), lambda self, t: self._set(0, t))
        values = property(lambda self: self._view(1), lambda self, t: self._set(1, t))

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            out = []
            for i, states in enumerate((key_states, value_states)):
                n, new, store = self._used[i], states.shape[-2], self._kv[i]
                if store is None or store.dim() != 4 or n + new > store.shape[-2]:
                    b, h, _, d = states.shape
                    bigger = states.new_empty((b, h, n + new + ROOM, d))
                    if n:
                        assert store is not None
                        bigger[:, :, :n].copy_(store[:, :, :n])
                    store = self._kv[i] = bigger
                store[:, :, n : n + new].copy_(states)
                self._used[i] = n + new
                out.append(store[:, :, : n + new])
            return out[0], out[1]

    return RoomLayer


@dataclass
class _Rows:
    """The running batch: one row per unfinished prompt."""

    cache: Any  # DynamicCache; each layer's keys/values: (rows, kv_heads, width, head_dim)
    mask: torch.Tensor  # (rows, width) bool: the cache columns each row attends to
    positions: torch.Tensor  # (rows, 1) position id of each row's next input token
    tokens: torch.Tensor  # (rows,) each row's newest token: the next step's input
    prompts: list[int]  # row -> index into the prompts


class _Decoder:
    """Greedy decoding of a fixed set of prompts (see `greedy_generate`); `Continuous`
    feeds it prompts as they arrive instead."""

    def __init__(
        self,
        model: Any,
        prompts: Sequence[list[int]],
        max_new_tokens: int,
        eos: set[int],
        pad_id: int,
        stop_check: StopCheck | None,
        on_done: OnDone | None = None,
        prefix: Sequence[int] | None = None,
    ):
        self.model = model
        # prompt index -> its tokens, its token limit, its output so far (dicts, so a
        # continuous decoder can forget the finished)
        self.prompts: dict[int, list[int]] = dict(enumerate(prompts))
        self.limits: dict[int, int] = dict.fromkeys(self.prompts, max_new_tokens)
        self.outputs: dict[int, list[int]] = {i: [] for i in self.prompts}
        self.eos = eos
        self.pad_id = pad_id
        self.stop_check = stop_check
        self.on_done = on_done
        self.choose: Choose | None = None  # None: greedy
        params = inspect.signature(model.forward).parameters
        # Only the last position's logits choose a token; the full (batch, seq, vocab)
        # logits of a prompt would cost more than the rest of the forward.
        self.last_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        if prefix is None:
            # Every prompt keeps at least one token of its own: the logits of its last
            # token choose its first new token.
            shared = min(common_prefix_length(prompts), min(len(p) for p in prompts) - 1)
            prefix = prompts[0][:shared]
        self.prefix = list(prefix)
        self.prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer, (1, h, p, d)

    def _fits(self, i: int, width: int) -> bool:
        """Whether prompt `i` may join a batch whose cache is `width` columns wide (0: an
        empty batch). Every row of a batch carries as many columns as its widest, and a
        decoding step reads them all: a prompt far longer than the batch waits for a
        batch of its own, rather than make every short row carry its length."""
        return not width or len(self.prompts[i]) <= WIDTH_SPREAD * width + WIDTH_SLACK

    def _shares_prefix(self, i: int) -> bool:
        """Whether prompt `i` begins with the shared prefix and has tokens after it."""
        p = len(self.prefix)
        prompt = self.prompts[i]
        return bool(p) and len(prompt) > p and prompt[:p] == self.prefix

    def run(self, batch_size: int) -> dict[int, list[int]]:
        import torch

        refill_at = max(1, batch_size // 4)  # free rows that make it worth a prefill
        queue = deque(sorted(range(len(self.prompts)), key=lambda i: len(self.prompts[i])))
        rows: _Rows | None = None
        with torch.inference_mode():
            if self.prefix:
                self.prefix_kv = self._run_prefix()
            while True:
                live = 0 if rows is None else len(rows.prompts)
                width = 0 if rows is None else int(rows.mask.shape[1])
                if (
                    queue
                    and (live == 0 or batch_size - live >= refill_at)
                    and self._fits(queue[0], width)
                ):
                    group = [queue.popleft()]
                    width = width or len(self.prompts[group[0]])
                    while queue and len(group) < batch_size - live and self._fits(queue[0], width):
                        group.append(queue.popleft())
                    joining = self._prefill(group)
                    if rows is None or joining is None:
                        rows = rows or joining
                    else:
                        rows = _merge(rows, joining)
                elif rows is None:
                    return self.outputs
                else:
                    rows = self._step(rows)

    def _run_prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        import torch

        cache = new_cache(self.model.config)  # full attention only: supports()
        device = self.model.device
        self.model(
            input_ids=torch.tensor([self.prefix], device=device),  # (1, p)
            position_ids=torch.arange(len(self.prefix), device=device).unsqueeze(0),
            cache=cache,
            use_cache=True,
            **self.last_logits,
        )
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _prefill(self, group: list[int]) -> _Rows | None:
        """Run the prompts of `group` after the shared prefix; rows for the unfinished.

        Prompts of like length run together: a forward pads every prompt to its longest,
        so one long prompt among short ones would multiply the work (`length_chunks`).
        """
        p = len(self.prefix)
        # a prompt that does not begin with the prefix runs whole, the prefix masked out
        own = {i: p if self._shares_prefix(i) else 0 for i in group}
        length = {i: len(self.prompts[i]) - own[i] for i in group}  # what each one runs
        group = sorted(group, key=length.__getitem__)
        sizes = length_chunks([length[i] for i in group], FORWARD_COST_TOKENS)
        parts, start = [], 0
        for size in sizes:
            chunk = group[start : start + size]
            start += size
            part = self._prefill_chunk(chunk, [own[i] for i in chunk])
            if part is not None:
                parts.append(part)
        return _merge(*parts) if parts else None

    def _prefill_chunk(self, group: list[int], own: list[int]) -> _Rows | None:
        """One forward of `group`'s prompts, each after its first `own` tokens (the shared
        prefix's keys and values, or 0)."""
        import torch

        p, n = len(self.prefix), len(group)
        suffixes = [self.prompts[i][o:] for i, o in zip(group, own, strict=True)]
        width = max(len(s) for s in suffixes)
        cache = new_cache(self.model.config)
        for layer, (keys, values) in enumerate(self.prefix_kv):
            cache.update(keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1), layer)
        # [prefix][padding][suffix]: the padding is masked out and gets position 0.
        pads = [width - len(s) for s in suffixes]
        device = self.model.device
        input_ids = torch.tensor(
            [[self.pad_id] * pad + s for pad, s in zip(pads, suffixes, strict=True)], device=device
        )  # (rows, width)
        positions = torch.tensor(
            [[0] * pad + list(range(o, o + width - pad)) for pad, o in zip(pads, own, strict=True)],
            device=device,
        )
        mask = torch.tensor(
            [
                [o > 0] * p + [False] * pad + [True] * (width - pad)
                for pad, o in zip(pads, own, strict=True)
            ],
            device=device,
        )  # (rows, p + width)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            **self.last_logits,
        )
        tokens = self._choose(group, out.logits[:, -1, :])  # (rows,)
        rows = _Rows(cache, mask, positions[:, -1:] + 1, tokens, group)
        return _select(rows, self._record(group, tokens.tolist()))

    def _step(self, rows: _Rows) -> _Rows | None:
        """One decoding step for every row; the rows still running."""
        import torch

        rows.mask = torch.cat([rows.mask, rows.mask.new_ones(len(rows.prompts), 1)], dim=1)
        out = self.model(
            input_ids=rows.tokens.unsqueeze(1),  # (rows, 1)
            attention_mask=rows.mask,
            position_ids=rows.positions,
            cache=rows.cache,
            use_cache=True,
        )
        rows.positions = rows.positions + 1
        rows.tokens = self._choose(rows.prompts, out.logits[:, -1, :])
        return _select(rows, self._record(rows.prompts, rows.tokens.tolist()))

    def _choose(self, prompts: list[int], logits: torch.Tensor) -> torch.Tensor:
        """The next token of each row from its logits (rows, vocab): greedy by default."""
        if self.choose is None:
            return logits.argmax(dim=-1)
        return self.choose(prompts, logits)

    def _record(self, prompts: list[int], tokens: list[int]) -> list[int]:
        """Append each row's new token to its output; the rows that go on."""
        going_on = []
        for row, (i, token) in enumerate(zip(prompts, tokens, strict=True)):
            out = self.outputs[i]
            if token not in self.eos:
                out.append(token)
                stopped = self.stop_check is not None and self.stop_check(i, out)
                if not stopped and len(out) < self.limits[i]:
                    going_on.append(row)
                    continue
            if self.on_done is not None:
                self.on_done(i, out)
        return going_on


def _select(rows: _Rows, keep: list[int]) -> _Rows | None:
    """Only the rows numbered `keep` (None if none), without columns no row uses."""
    import torch

    if len(keep) == len(rows.prompts):
        return rows
    if not keep:
        return None
    index = torch.tensor(keep, device=rows.mask.device)
    rows.cache.batch_select_indices(index)
    rows.mask = rows.mask[index]
    rows.positions = rows.positions[index]
    rows.tokens = rows.tokens[index]
    rows.prompts = [rows.prompts[r] for r in keep]
    used = rows.mask.any(dim=0)  # (width,)
    width = used.numel()
    if width - int(used.sum()) >= max(8, width // 8):  # worth a copy of the cache
        columns = used.nonzero().squeeze(1)
        rows.mask = rows.mask[:, columns]
        for layer in rows.cache.layers:
            layer.keys = layer.keys.index_select(2, columns)
            layer.values = layer.values.index_select(2, columns)
    return rows


def _merge(*parts: _Rows) -> _Rows:
    """One batch of the rows of every part, in order; the narrower gain unused columns."""
    import torch

    if len(parts) == 1:
        return parts[0]
    width = max(r.mask.shape[1] for r in parts)

    def widen(t: torch.Tensor, dim: int) -> torch.Tensor:
        missing = width - t.shape[dim]
        if not missing:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    for layers in zip(*(r.cache.layers for r in parts), strict=True):
        layers[0].keys = torch.cat([widen(x.keys, 2) for x in layers])
        layers[0].values = torch.cat([widen(x.values, 2) for x in layers])
    return _Rows(
        cache=parts[0].cache,
        mask=torch.cat([widen(r.mask, 1) for r in parts]),
        positions=torch.cat([r.positions for r in parts]),
        tokens=torch.cat([r.tokens for r in parts]),
        prompts=[i for r in parts for i in r.prompts],
    )


# A prompt joins a running batch (or a group being formed) only when it is at most this
# many times as long as the batch's cache is wide, plus this many columns (about what a
# row generates): short prompts are not made to carry a long one's columns.
WIDTH_SPREAD = 2
WIDTH_SLACK = 64

# What a forward costs beyond its tokens (reading every weight once), in tokens of a
# prefill: on 2 CPU cores a SmolLM2 forward of one token takes ~45 ms, and of many about
# 1 ms more per token.
FORWARD_COST_TOKENS = 32


def length_chunks(lengths: Sequence[int], forward_cost: int = FORWARD_COST_TOKENS) -> list[int]:
    """How many of the `lengths` (ascending) each prefill forward takes, in order.

    A forward of rows i..j-1 computes (j - i) * lengths[j-1] tokens, padding included;
    the split minimises that plus `forward_cost` per forward (exact: a dynamic program
    over the cut points, n ≤ a batch).
    """
    n = len(lengths)
    if any(b < a for a, b in itertools.pairwise(lengths)):
        raise ValueError("lengths must be in ascending order")
    best = [0] * (n + 1)  # best[j]: cost of the first j rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        best[j], cut[j] = min(
            (best[i] + (j - i) * lengths[j - 1] + forward_cost, i) for i in range(j)
        )
    sizes = []
    while n:
        sizes.append(n - cut[n])
        n = cut[n]
    return sizes[::-1]


Arrival = tuple[int, list[int], int]  # (prompt index, prompt tokens, token limit)
Take = Callable[[int, bool], list[Arrival]]  # (room, wait) -> prompts that have arrived


class Continuous(_Decoder):
    """The same loop for prompts that arrive while others decode (serving): each joins
    the batch at the next step and leaves it when done, and is then forgotten.

    `prefix` is fixed up front (a chat template's opening); a prompt that does not
    begin with it runs whole. `take(room, wait)` returns up to `room` arrivals; with
    `wait` (nothing is decoding) it blocks until one arrives, and an empty answer then
    ends `serve`. Arrivals join as soon as they come, not a quarter of a batch at a time:
    a person is waiting for each of them.
    """

    def __init__(
        self,
        model: Any,
        prefix: Sequence[int],
        eos: set[int],
        pad_id: int,
        stop_check: StopCheck | None,
        on_done: OnDone | None,
        choose: Choose | None = None,
    ):
        super().__init__(model, [], 1, eos, pad_id, stop_check, on_done, prefix=prefix)
        self.choose = choose

    def serve(self, take: Take, batch_size: int) -> None:
        import torch

        rows: _Rows | None = None
        with torch.inference_mode():
            if self.prefix and not self.prefix_kv:
                self.prefix_kv = self._run_prefix()
            while True:
                live = 0 if rows is None else len(rows.prompts)
                arrived = take(batch_size - live, rows is None) if live < batch_size else []
                if rows is None and not arrived:
                    return
                if arrived:
                    for i, tokens, limit in arrived:
                        if not tokens:
                            raise ValueError(f"prompt {i} is empty: it needs a token")
                        self.prompts[i], self.limits[i], self.outputs[i] = tokens, limit, []
                    joining = self._prefill([i for i, _, _ in arrived])
                    if rows is None or joining is None:
                        rows = rows or joining
                    else:
                        rows = _merge(rows, joining)
                elif rows is not None:
                    rows = self._step(rows)

    def _record(self, prompts: list[int], tokens: list[int]) -> list[int]:
        going_on = super()._record(prompts, tokens)
        staying = {prompts[row] for row in going_on}
        for i in prompts:
            if i not in staying:
                del self.prompts[i], self.limits[i], self.outputs[i]
        return going_on
