"""The docs are kept true by tests: a command missing from the README's table, a setting
missing from docs/settings.md (or a default written wrong there), or a doc naming a
command that does not exist fails here."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from tests.test_cli import all_commands
from upstream.settings import Settings, _coerce

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))


def cli_commands() -> set[tuple[str, ...]]:
    return set(all_commands())


def _words(segment: str) -> tuple[str, ...]:
    """The leading command words of `upstream prs show ID`-like text: lowercase names."""
    out = []
    for word in segment.split():
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        out.append(word)
    return tuple(out)


def readme_table_commands() -> set[tuple[str, ...]]:
    """Commands named in the first cell of each row of the README's command table.

    A cell is `upstream GROUP CMD ARGS` / `CMD2 ARGS` / …: the later parts are more
    commands of the same group (`upstream prs list` / `show ID`).
    """
    section = README.read_text().split("## Commands", 1)[1].split("\n## ", 1)[0]
    known = cli_commands()
    named: set[tuple[str, ...]] = set()
    for row in section.splitlines():
        if not row.startswith("| `upstream"):
            continue
        cell = row.split(" | ")[0].lstrip("| ")
        parts = re.findall(r"`([^`]+)`", cell)
        first = _words(parts[0])[1:]  # after "upstream"
        path = max((first[:n] for n in range(len(first) + 1) if first[:n] in known), key=len)
        assert path, f"README command table: {parts[0]!r} names no command"
        named.add(path)
        group = path[:-1]
        for part in parts[1:]:
            words = _words(part)
            if not words:
                continue  # an argument shown on its own, not a command
            more = max(
                (w for w in ((*group, *words[:n]) for n in range(1, len(words) + 1)) if w in known),
                key=len,
                default=None,
            )
            assert more, f"README command table: {part!r} (after {parts[0]!r}) names no command"
            named.add(more)
    return named


def test_every_command_is_in_the_readme_table() -> None:
    named = readme_table_commands()
    missing = sorted(" ".join(c) for c in cli_commands() - named)
    assert not missing, f"commands missing from the README's command table: {missing}"
    assert ("prs", "approve") in named and ("leaderboard",) in named  # the parser reads it


def test_the_docs_name_only_commands_that_exist() -> None:
    """`upstream WORDS` in backticks anywhere in the README or docs/ is a real command."""
    known = cli_commands()
    wrong = []
    for page in [README, *DOCS]:
        for code in re.findall(r"`upstream ([^`]+)`", page.read_text()):
            words = _words(code)
            if not any(words[:n] in known for n in range(1, len(words) + 1)):
                wrong.append(f"{page.name}: `upstream {code}`")
    assert not wrong, "the docs name commands that do not exist:\n" + "\n".join(wrong)


def settings_table() -> dict[str, dict[str, str]]:
    rows = {}
    for line in (ROOT / "docs" / "settings.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = {"env": cells[1], "default": cells[2], "what": cells[3]}
    return rows


def test_every_setting_is_in_docs_settings_with_its_default() -> None:
    table = settings_table()
    code = {f.name: f for f in fields(Settings)}
    assert sorted(table) == sorted(code), "docs/settings.md and Settings differ in their names"
    for name, f in code.items():
        row = table[name]
        if name == "policy":
            assert row["env"] == "(`config.toml` only)"
        else:
            assert row["env"] == f"`UPSTREAM_{name.upper()}`", name
        assert row["what"], name
        if f.default is MISSING or f.default == "":
            # computed from home, the OS user, or a per-model table: said in words
            assert not row["default"].startswith("`"), name
            continue
        written = row["default"].strip("`")
        assert _coerce(name, f.type, written) == f.default, f"{name}: docs say {written}"


def test_the_settings_table_is_read_as_the_hub_reads_it(tmp_path: Path) -> None:
    """The environment names in the table are the ones the hub reads."""
    table = settings_table()
    env = {"UPSTREAM_PORT": "9123", "UPSTREAM_CONFIRMATIONS_NEEDED": "5"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        s = Settings.load(tmp_path)
    assert (s.port, s.confirmations_needed) == (9123, 5)
    assert {table["port"]["env"], table["confirmations_needed"]["env"]} == {f"`{k}`" for k in env}


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    """(method, path) of every route the hub's app serves, included routers flattened."""
    from fastapi import routing

    from upstream.hub import Hub
    from upstream.server.app import create_app

    hub = Hub.open(tmp_path / "home")
    try:
        app = create_app(hub)
        # FastAPI ≥ 0.165 keeps included routers nested in `app.routes`; older ones flatten.
        flatten = getattr(routing, "iter_route_contexts", None)
        routes = list(flatten(app.routes)) if flatten else list(app.routes)
        return {
            (method, route.path_format)
            for route in routes
            for method in (route.methods or set()) - {"HEAD"}
        }
    finally:
        hub.close()


def test_docs_api_lists_every_route_and_no_other(tmp_path: Path) -> None:
    documented = set()
    pages = (ROOT / "docs" / "web.md").read_text().splitlines()
    for line in (ROOT / "docs" / "api.md").read_text().splitlines() + pages:
        row = re.fullmatch(r"\| (GET|POST|PUT|DELETE|PATCH) \| `([^`]+)` \| .+ \|", line)
        if row:
            documented.add((row[1], row[2]))
    served = app_routes(tmp_path)
    assert ("POST", "/api/contributions/{contribution_id}/approve") in served  # flattened
    assert sorted(served - documented) == [], "routes missing from docs/api.md or web.md"
    assert sorted(documented - served) == [], "docs/api.md or web.md names routes the app lacks"
