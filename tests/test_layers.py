"""The layers of DESIGN.md hold: `lint-imports` (pyproject.toml) checks who may import
whom and that no layer has a circle; this test checks the one exception it cannot see,
that a function-local import of our own code only defers a heavy library."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "upstream"
# Modules whose import pulls in torch, transformers, numpy, httpx or FastAPI, or that
# load a model: importing them inside the function that needs them keeps `upstream
# --help` and the API's start fast.
HEAVY = (
    "upstream.duplicates",
    "upstream.embeddings",
    "upstream.engines.fastgen",
    "upstream.engines.hf",
    "upstream.engines.openai",
    "upstream.engines.packed",
    "upstream.exports",
    "upstream.merging",
    "upstream.training",
    "upstream.server.app",
    "upstream.demo",
)


def test_a_function_local_import_only_defers_a_heavy_module() -> None:
    light = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.ImportFrom):
                    continue
                module = node.module or ""
                full = [f"{module}.{a.name}" for a in node.names]
                deferred = module.startswith(HEAVY) or all(n.startswith(HEAVY) for n in full)
                if module.startswith("upstream") and not deferred:
                    light.append(f"{path.relative_to(SRC)}:{node.lineno} {module}")
    assert light == [], f"import these at the top of their module: {light}"
