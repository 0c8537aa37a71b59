"""Upstream: a self-hosted hub that closes the feedback loop of open AI models."""

import os

# Upstream works offline: weights and data come from the hub's own store or the local
# Hugging Face cache, never from the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
