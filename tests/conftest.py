"""Shared fixtures: hubs in temporary homes and tiny models built offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny_models import build_model
from upstream.db.schema import HubSecret
from upstream.hub import Hub


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with tokenizer and ChatML template (built once per run)."""
    return build_model(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    # no write rate limit: tests write fast from one address (test_hardening tests the limit)
    h = Hub.open(tmp_path / "home", write_rate_per_minute=0)
    with h.session() as s, s.begin():  # one split secret for every test run: reproducible
        secret = s.get(HubSecret, "split")
        assert secret is not None
        secret.value = "tests-split-secret"
    yield h
    h.close()


@pytest.fixture
def tiny_hub(hub: Hub, tiny_model_dir: Path) -> Hub:
    """A hub with the tiny Llama imported as model `tiny`, with its guard suite (as the
    import job makes it)."""
    from upstream.guard import ensure_guard_suite
    from upstream.registry import import_model

    import_model(hub, str(tiny_model_dir), "tiny")
    ensure_guard_suite(hub, "tiny")
    return hub


@pytest.fixture(scope="session")
def smol_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub with the bundled SmolLM2 imported as `upstream up` does it (once per run)."""
    from upstream.registry import default_model_import

    h = Hub.open(tmp_path_factory.mktemp("smol") / "home")
    args = default_model_import(h)
    assert args == {"source": "bundled:smollm2-135m-instruct", "name": "smollm2-135m-instruct"}
    assert h.jobs.run_foreground("models.import", args)["new"] is True
    yield h
    h.close()
