"""Serving many people at once: requests to one loaded model share one decoding loop.

Each loaded model (a revision with its adapters) gets a `Batcher`: one thread that runs
`fastgen.Continuous`, so a request that arrives while others decode joins their batch at
the next step and leaves it when it is done. Greedy rows get exactly the tokens they
would get alone (the loop's guarantee); sampled rows draw from their own seeded
generator, so a seed gives the same answer whatever else is in the batch (up to the
float rounding of a batched product).

Bounds: at most `batch_size` rows decode together and at most `max_waiting` more wait;
one more is refused with `Overloaded` (the API's 503), never queued without limit. A
request can be cancelled (its client went away): its row stops at its next token.

Streaming: `on_text(delta)` is called from the decoding thread with each new piece of
text, held back while it could still be the start of a stop string or of a character
whose bytes are not all generated yet, so the pieces add up to exactly the final text.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from upstream.engines.base import GenRequest, GenResult
from upstream.engines.fastgen import Arrival, Continuous, common_prefix_length
from upstream.engines.hf import HFEngine, LoadedModel, _decode, _eos_ids, _result
from upstream.errors import UpstreamError

if TYPE_CHECKING:
    import torch

TextFn = Callable[[str], None]
DEFAULT_BATCH = 32  # rows decoding together
DEFAULT_WAITING = 64  # requests waiting to join


class Overloaded(UpstreamError):
    status_code = 503
    code = "overloaded"


@dataclass(frozen=True)
class Sampling:
    """How a row picks its tokens: temperature 0 is greedy (the default, reproducible)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class Ticket:
    """One request inside a batcher: its prompt, how it samples, where its text goes."""

    index: int
    tokens: list[int]
    request: GenRequest
    sampling: Sampling
    on_text: TextFn | None = None
    result: Future[GenResult] = field(default_factory=Future)
    cancelled: bool = False
    sent: str = ""  # text already given to on_text
    generator: Any = None  # torch.Generator of a sampled row
    failed: BaseException | None = None  # what ended this request alone

    def cancel(self) -> None:
        self.cancelled = True


class Batcher:
    """One decoding thread for one loaded model; `submit` from any thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        batch_size: int = DEFAULT_BATCH,
        max_waiting: int = DEFAULT_WAITING,
        max_prompt_chars: int | None = None,
    ):
        self.engine = (
            HFEngine(loaded, batch_size)
            if max_prompt_chars is None
            else HFEngine(loaded, batch_size, max_prompt_chars)
        )
        self.batch_size = max(1, batch_size)
        self.max_waiting = max(0, max_waiting)
        self._waiting: deque[Ticket] = deque()
        self._live: dict[int, Ticket] = {}
        self._next = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        tok = loaded.tokenizer
        self._eos = set(_eos_ids(loaded.model, tok))

    # ------------------------------------------------------------ callers' side

    def submit(
        self, request: GenRequest, sampling: Sampling = Sampling(), on_text: TextFn | None = None
    ) -> Ticket:
        """Queue `request`; its `result` future is set when it is done. Raises
        InvalidInput for a request no engine would run, Overloaded when the queue is full."""
        self.engine.check(request)
        tokens = self.engine.encode(request)
        with self._cond:
            if len(self._waiting) >= self.max_waiting + max(0, self.batch_size - len(self._live)):
                raise Overloaded(
                    f"{len(self._live)} requests are being answered and {len(self._waiting)} "
                    f"wait for this model (at most {self.max_waiting} may wait); try again shortly"
                )
            ticket = Ticket(self._next, tokens, request, sampling, on_text)
            self._next += 1
            if sampling.temperature > 0:
                import torch

                ticket.generator = torch.Generator()
                if sampling.seed is not None:
                    ticket.generator.manual_seed(sampling.seed)
                else:
                    ticket.generator.seed()
            self._waiting.append(ticket)
            self._cond.notify()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)
                self._thread.start()
        return ticket

    def load(self) -> tuple[int, int]:
        """(rows decoding, requests waiting)."""
        with self._cond:
            return len(self._live), len(self._waiting)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------ the decoding thread

    def _run(self) -> None:
        loaded = self.engine.loaded
        decoder = Continuous(
            loaded.model,
            self._prefix(),
            self._eos,
            loaded.tokenizer.pad_token_id,
            self._stop_check,
            self._done,
            self._choose,
        )
        try:
            decoder.serve(self._take, self.batch_size)
        except BaseException as e:  # every request in flight hears of it
            with self._cond:
                failed = list(self._live.values()) + list(self._waiting)
                self._live.clear()
                self._waiting.clear()
            for t in failed:
                if not t.result.done():
                    t.result.set_exception(e)

    def _prefix(self) -> list[int]:
        """The chat template's opening, the same for every conversation that has no
        system prompt of its own: run once, shared by every row that begins with it."""
        probes = [
            self.engine.encode(GenRequest.from_prompt(text, max_new_tokens=1))
            for text in ("a", "b c")
        ]
        return probes[0][: common_prefix_length(probes)]

    def _take(self, room: int, wait: bool) -> list[Arrival]:
        with self._cond:
            while wait and not self._waiting and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            taken: list[Arrival] = []
            while self._waiting and len(taken) < room:
                t = self._waiting.popleft()
                if t.cancelled:
                    t.result.cancel()
                    continue
                self._live[t.index] = t
                taken.append((t.index, t.tokens, t.request.max_new_tokens))
            return taken

    def _stop_check(self, i: int, tokens: list[int]) -> bool:
        t = self._live[i]
        if t.cancelled or t.failed is not None:
            return True
        stop = t.request.stop
        tok = self.engine.loaded.tokenizer
        if stop and any(s in _decode(tok, tokens[-16:]) for s in stop):
            return True
        if t.on_text is not None:
            text = _decode(tok, tokens)
            shown = _safe_text(text, stop)
            if len(shown) > len(t.sent) and shown.startswith(t.sent):
                t.on_text(shown[len(t.sent) :])
                t.sent = shown
        return False

    def _done(self, i: int, ids: list[int]) -> None:
        with self._cond:
            t = self._live.pop(i)
        if t.failed is not None:
            t.result.set_exception(t.failed)
            return
        request = t.request
        ended = len(ids) < request.max_new_tokens
        result = _result(self.engine.loaded.tokenizer, ids, len(t.tokens), request.stop, ended)
        if t.on_text is not None and len(result.text) > len(t.sent):
            t.on_text(result.text[len(t.sent) :])
            t.sent = result.text
        if t.cancelled:
            t.result.cancel()
        else:
            t.result.set_result(result)

    def _choose(self, prompts: list[int], logits: torch.Tensor) -> torch.Tensor:
        tokens = logits.argmax(dim=-1)  # (rows,)
        for row, i in enumerate(prompts):
            t = self._live[i]
            if t.sampling.temperature > 0 and t.failed is None:
                try:
                    tokens[row] = sample(logits[row], t.sampling, t.generator)
                except Exception as e:  # this request fails; the rows beside it go on
                    t.failed = e
        return tokens


def sample(logits: torch.Tensor, sampling: Sampling, generator: Any) -> int:
    """One token from a row's logits (vocab,): temperature, then nucleus (top_p).

    In float64 and from the top logit down, so that any temperature the API admits
    (above 0) gives a distribution: 1e-300 is greedy rather than inf / inf = nan.
    """
    import torch

    scaled = logits.double()
    scaled = (scaled - scaled.max()) / sampling.temperature
    probs = torch.softmax(scaled, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # logits that were already nan or inf
        return int(logits.argmax().item())
    if sampling.top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        # keep the smallest head whose mass reaches top_p (at least one token)
        outside = ordered.cumsum(dim=-1) - ordered >= sampling.top_p
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _safe_text(text: str, stop: Sequence[str]) -> str:
    """The part of `text` that cannot change as tokens follow: without a trailing partial
    character, and without an end that could be the start of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return text[: len(text) - hold] if hold else text


_batchers: dict[tuple[str, ...], Batcher] = {}
_batchers_lock = threading.Lock()


def batcher_for(
    loaded: LoadedModel,
    batch_size: int = DEFAULT_BATCH,
    max_waiting: int = DEFAULT_WAITING,
    max_prompt_chars: int | None = None,
) -> Batcher:
    """The one batcher of a loaded model in this process (made on first use)."""
    with _batchers_lock:
        found = _batchers.get(loaded.key)
        if found is None or found.engine.loaded is not loaded:
            if found is not None:
                found.stop()
            found = Batcher(loaded, batch_size, max_waiting, max_prompt_chars)
            _batchers[loaded.key] = found
        return found


def stop_all() -> None:
    """Stop every batcher's thread (the server is shutting down)."""
    with _batchers_lock:
        found = list(_batchers.values())
        _batchers.clear()
    for b in found:
        b.stop()
