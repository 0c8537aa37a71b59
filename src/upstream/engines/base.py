"""The engine interface: a batch of generation requests in, one result per request out.

Generation for evaluation is greedy, so a result is reproducible; `settings_key` is
what a result cache keys on besides the subject and the input.

A request may say `until`: a test of the text so far that is True once generating more
cannot change what the caller wants from it (the verdicts of its checks). An engine that
can stop early then ends the row there, with `finish_reason` "verdict": the text is a
prefix of the full output. `until` is not a generation setting: the tokens generated are
the same, only fewer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from upstream.errors import InvalidInput
from upstream.settings import MAX_PROMPT_CHARS  # noqa: F401  (the limit engines apply)

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
DEFAULT_MAX_NEW_TOKENS = 256
MAX_NEW_TOKENS = 4096  # the most tokens any request may generate


def check_max_new_tokens(value: int) -> None:
    """Refuse a generation length outside 1 to MAX_NEW_TOKENS, naming the range."""
    if not 1 <= value <= MAX_NEW_TOKENS:
        raise InvalidInput(f"max_new_tokens {value}: allowed 1 to {MAX_NEW_TOKENS}")


@dataclass(frozen=True)
class GenRequest:
    messages: list[Message]
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    stop: tuple[str, ...] = ()
    # (text so far) -> stop now; asked only at word boundaries (see engines.hf)
    until: Callable[[str], bool] | None = field(default=None, compare=False)

    @classmethod
    def from_prompt(cls, prompt: str, **kwargs: Any) -> GenRequest:
        return cls(messages=[{"role": "user", "content": prompt}], **kwargs)

    def validate(self, max_chars: int) -> None:
        """Refuse requests no engine should run, naming what is wrong."""
        if not self.messages:
            raise InvalidInput("messages: at least one message is needed")
        total = 0
        for i, m in enumerate(self.messages):
            if m.get("role") not in ROLES:
                raise InvalidInput(
                    f"messages[{i}].role {m.get('role')!r}: allowed roles are {', '.join(ROLES)}"
                )
            if not isinstance(m.get("content"), str):
                raise InvalidInput(f"messages[{i}].content: must be a string")
            total += len(m["content"])
        if not any(m["content"].strip() for m in self.messages):
            raise InvalidInput("prompt is empty")
        if total > max_chars:
            raise InvalidInput(f"prompt has {total} characters; the limit is {max_chars}")
        check_max_new_tokens(self.max_new_tokens)

    def settings_key(self) -> str:
        return json.dumps(
            {"max_new_tokens": self.max_new_tokens, "stop": list(self.stop), "greedy": True},
            sort_keys=True,
        )


@dataclass
class GenResult:
    text: str
    # stop: EOS or a stop string; length: the token limit; verdict: `until` said enough
    finish_reason: Literal["stop", "length", "verdict"]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: list[int] = field(default_factory=list)  # generated ids, when the engine knows them

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ResultFn = Callable[[int, GenResult], None]  # (request index, its final result)


class Engine(Protocol):
    """Anything that can run a batch of requests; results come back in request order.

    `on_result(index, result)` is called as each request's result is final, in the order
    they finish, so a caller can store or show results before the whole batch is done.
    """

    name: str

    def generate(
        self, requests: Sequence[GenRequest], on_result: ResultFn | None = None
    ) -> list[GenResult]: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut `text` before the first stop string; (text, whether one was found)."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
