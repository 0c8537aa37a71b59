"""Engines turn generation requests into outputs: transformers in-process, or HTTP."""

from upstream.engines.base import Engine, GenRequest, GenResult

__all__ = ["Engine", "GenRequest", "GenResult"]
