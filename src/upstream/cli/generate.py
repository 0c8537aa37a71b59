"""`upstream generate`: one answer from a model, greedy, as an evaluation would get it."""

from __future__ import annotations

import typer

from upstream.cli.common import (
    JsonOption,
    console,
    emit_json,
    err_console,
    max_new_tokens_option,
    open_hub,
)
from upstream.contributions import resolve_adapters
from upstream.engines.base import GenRequest
from upstream.generation import generate_one


def generate(
    ref: str = typer.Argument(..., help="NAME or NAME@REV."),
    prompt: str = typer.Argument(..., help="The user message."),
    adapter: list[str] = typer.Option(
        [],
        "--adapter",
        help="A PEFT LoRA directory, or a contribution's adapter as pr:N (repeatable).",
    ),
    system: str = typer.Option("", "--system", help="An optional system message."),
    max_new_tokens: int = max_new_tokens_option(),
    stop: list[str] = typer.Option([], "--stop", help="Stop at this string (repeatable)."),
    json_out: bool = JsonOption,
) -> None:
    """Generate the model's answer to PROMPT (greedy, chat template applied)."""

    hub = open_hub()
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    request = GenRequest(messages=messages, max_new_tokens=max_new_tokens, stop=tuple(stop))
    with err_console.status("loading model and generating"):
        out = generate_one(hub, ref, request, adapters=resolve_adapters(hub, adapter))
    if json_out:
        emit_json(out)
    else:
        console.print(out["text"], markup=False, highlight=False)
