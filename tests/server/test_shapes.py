"""Every answer of the API is a typed body: `/openapi.json` names the schema of each
route's success response, and the CLI's `--json` prints the same shapes."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from upstream.hub import Hub
from upstream.registry import ModelSummary
from upstream.server.app import create_app
from upstream.shapes import Shape

# Routes that answer no JSON body of their own
BODILESS = {("DELETE", "/api/models/{name}/tags/{tag}")}


def success_schemas(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any] | None]:
    out: dict[tuple[str, str], dict[str, Any] | None] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            ok = [c for c in op["responses"] if c.startswith("2")]
            assert len(ok) == 1, (method, path, ok)
            content = op["responses"][ok[0]].get("content", {})
            out[(method.upper(), path)] = content.get("application/json", {}).get("schema")
    return out


def test_every_api_route_answers_a_named_schema(hub: Hub) -> None:
    spec = create_app(hub).openapi()
    api = {
        route: schema
        for route, schema in success_schemas(spec).items()
        if route[1].startswith("/api/") and route not in BODILESS
    }
    assert len(api) > 40
    assert [route for route, schema in api.items() if not (schema and "$ref" in schema)] == []
    # each answer's schema says what its fields are and that there are no others
    answers = {schema["$ref"].rsplit("/", 1)[1] for schema in api.values() if schema}
    for name in sorted(answers | {"ErrorBody"}):
        schema = spec["components"]["schemas"][name]
        assert schema.get("properties"), name
        assert schema.get("additionalProperties") is False, name


def test_a_shape_refuses_a_field_it_does_not_declare() -> None:
    good = {
        "name": "m",
        "revisions": 1,
        "latest": None,
        "architecture": None,
        "num_parameters": None,
        "tags": {},
        "created_at": "2026-12-04T00:00:00",
    }
    assert ModelSummary.model_validate(good).name == "m"
    with pytest.raises(ValidationError, match="extra"):
        ModelSummary.model_validate({**good, "secret_path": "/etc"})
    assert issubclass(ModelSummary, Shape)
