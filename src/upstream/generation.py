"""Generating from a named revision: the one function the CLI and the API both call."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upstream.engines.base import GenRequest
from upstream.errors import NotFound
from upstream.registry import resolve

if TYPE_CHECKING:
    from upstream.hub import Hub


def generate_one(
    hub: Hub, ref: str, request: GenRequest, adapters: Sequence[Path] = ()
) -> dict[str, Any]:
    """Answer one request with revision `ref` (plus adapters), greedily."""
    from upstream.engines.hf import HFEngine

    request.validate(hub.settings.max_prompt_chars)
    for a in adapters:
        if not Path(a).is_dir():
            raise NotFound(f"adapter {a}: no such directory")
    with hub.session() as s:
        revision = resolve(s, ref)
        model_name = revision.model.name
    engine = HFEngine.for_revision(hub, revision, adapters, batch_size=1)
    result = engine.generate([request])[0]
    return {
        "model": model_name,
        "revision": revision.hash,
        "adapters": [str(a) for a in adapters],
        **result.as_dict(),
    }
