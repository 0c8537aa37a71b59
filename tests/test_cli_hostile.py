"""The CLI given hostile or mistaken input: one line of error (exit 2), never a traceback,
and user text printed as written, never read as markup."""

from __future__ import annotations

from pathlib import Path

from tests.people import owner
from tests.test_cli import upstream
from upstream.hub import Hub
from upstream.reports import parse_report, submit_one

MARKUP = "[/x] hello [bold]not bold[/bold] [link=file:///etc]"


def test_user_text_is_printed_as_written(tiny_hub: Hub) -> None:
    data = {"model": "tiny", "prompt": MARKUP, "expected": {"type": "exact", "value": "[/y]"}}
    report = submit_one(tiny_hub, parse_report(data), owner(tiny_hub), "cli").filed[0].id
    home = tiny_hub.settings.home
    tiny_hub.close()
    for args in (("reports", "list"), ("reports", "show", str(report))):
        out = upstream(home, *args)
        assert out.returncode == 0, out.stderr
        assert "Traceback" not in out.stderr
        assert MARKUP[:30] in out.stdout.replace("\n", ""), out.stdout


def test_mistakes_are_one_line_errors(tiny_hub: Hub, tmp_path: Path) -> None:
    home = tiny_hub.settings.home
    tiny_hub.close()
    file = tmp_path / "a-file"
    file.write_text("x")
    cases = [
        (("suites", "show", "nope", "--as", "ghost"), "no user 'ghost'"),
        (("reports", "file", "--model", "tiny", "--prompt", "q", "--expect", "8 legs"), "not JSON"),
        (("models", "export", "tiny", "--out", str(file)), "not an empty directory"),
        (("jobs", "cancel", str(2**63 + 5)), "less than or equal to"),
        (("release", "tiny", "--from", f"1,{2**64}"), "each from 0 to"),
        (("tokens", "create", "--user", "nobody"), "no user 'nobody'"),
        (("tokens", "create", "--user", owner_name(home), "--expires", "1000y"), "expiry"),
        (("users", "add", "bad name", "--role", "admin"), "user name"),
        (("users", "add", "neo", "--role", "god"), "role 'god'"),
        # refused before it binds: no admin could sign in, no Host name is allowed
        (("up", "--host", "0.0.0.0", "--no-import"), "create the first admin token"),
    ]
    for args, message in cases:
        out = upstream(home, *args)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert message in out.stderr.replace("\n", " "), (args, out.stderr)


def owner_name(home: Path) -> str:
    hub = Hub.open(home)
    try:
        return owner(hub).name
    finally:
        hub.close()
