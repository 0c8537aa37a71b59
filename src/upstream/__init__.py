"""Upstream: a self-hosted hub that closes the feedback loop of open AI models."""

import os

# Upstream works offline: weights and data come from the hub's own store or the local
# Hugging Face cache, never from the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's BLAS (OpenBLAS) on one thread: Upstream's only BLAS work is the duplicate
# search's matrix-vector product, and OpenBLAS's idle threads spin: in the server they
# took half of both cores from the requests (docs/benchmarks.md, filing). torch's
# products use their own threads (OpenMP), which this leaves alone.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
