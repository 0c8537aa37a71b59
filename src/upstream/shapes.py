"""The base of the typed bodies the API answers and the CLI's `--json` prints.

A shape forbids keys it does not declare, so a builder that returns a field its shape
lacks fails the tests (FastAPI validates every answer against its `response_model`)
instead of the field being dropped from the answer without a word.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Shape(BaseModel):
    model_config = ConfigDict(extra="forbid")
