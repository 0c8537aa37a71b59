"""The command line as a user runs it: real processes, exit codes, JSON on stdout."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def all_commands() -> list[tuple[str, ...]]:
    """Every command a user can run, as its words after `upstream`."""
    import typer.main

    from upstream.cli import app

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            yield path
            return
        for name, sub in sorted(subcommands.items()):
            yield from walk(sub, (*path, name))

    return list(walk(typer.main.get_command(app), ()))


# Every command and group, from the app itself: a new command is covered without a list.
COMMANDS = sorted({c[:n] for c in all_commands() for n in range(len(c) + 1)})


def upstream(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "UPSTREAM_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "upstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "upstream")
def test_every_command_has_help(tmp_path: Path, command: tuple[str, ...]) -> None:
    out = upstream(tmp_path, *command, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and len(out.stdout.splitlines()) > 4


def test_import_list_show_generate(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    assert upstream(home, "init").returncode == 0
    imported = upstream(home, "models", "import", str(tiny_model_dir), "--name", "tiny", "--json")
    assert imported.returncode == 0, imported.stderr
    result = json.loads(imported.stdout)
    assert result["new"] is True
    again = upstream(home, "models", "import", str(tiny_model_dir), "--name", "tiny")
    assert "already stored" in again.stdout and "nothing new stored" in again.stdout

    listing = json.loads(upstream(home, "models", "list", "--json").stdout)
    assert listing["models"][0]["latest"] == result["revision"]
    shown = json.loads(
        upstream(home, "models", "show", f"tiny@{result['revision'][:6]}", "--json").stdout
    )
    assert shown["revision"] == result["revision"] and shown["tags"] == ["latest"]
    human = upstream(home, "models", "show", "tiny")
    assert result["revision"] in human.stdout and "model.safetensors" in human.stdout

    gen = upstream(home, "generate", "tiny", "hello", "--max-new-tokens", "5", "--json")
    assert gen.returncode == 0, gen.stderr
    out = json.loads(gen.stdout)
    assert out["completion_tokens"] == 5 and out["revision"] == result["revision"]

    fsck = upstream(home, "fsck", "--json")
    assert fsck.returncode == 0 and json.loads(fsck.stdout)["ok"] is True


def test_user_mistakes_exit_2_with_one_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    missing_hub = upstream(home, "models", "list")
    assert missing_hub.returncode == 2 and "upstream init" in missing_hub.stderr
    upstream(home, "init")
    for args, message in [
        (["generate", "nope", "hi"], "unknown model 'nope'"),
        (["models", "show", "nope@v1"], "unknown model"),
        (["models", "import", str(tmp_path / "absent"), "--name", "x"], "no such file"),
        (["models", "import", str(tmp_path), "--name", "x"], "no config.json"),
    ]:
        out = upstream(home, *args)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) <= 3  # one line, maybe wrapped


def test_exit_after_a_model_was_loaded(tmp_path: Path, tiny_model_dir: Path) -> None:
    # commands that loaded torch skip the interpreter's teardown: codes and output intact
    home = tmp_path / "home"
    upstream(home, "models", "import", str(tiny_model_dir), "--name", "tiny")
    not_adapter = tmp_path / "not-an-adapter"
    not_adapter.mkdir()
    bad = upstream(home, "generate", "tiny", "hi", "--adapter", str(not_adapter))
    assert bad.returncode == 2 and "not a PEFT adapter" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    ok = upstream(home, "generate", "tiny", "hi", "--max-new-tokens", "3", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["completion_tokens"] == 3


def test_fsck_reports_a_damaged_blob(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    upstream(home, "models", "import", str(tiny_model_dir), "--name", "tiny")
    blob_files = sorted((home / "blobs").glob("??/*"), key=lambda p: p.stat().st_size)
    victim = blob_files[0]
    victim.chmod(0o644)
    victim.write_bytes(b"tampered")
    out = upstream(home, "fsck", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["corrupt"] == [victim.parent.name + victim.name]


def test_reports_from_the_command_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    upstream(home, "models", "import", str(tiny_model_dir), "--name", "tiny")
    data = Path(__file__).parent / "data" / "paraphrased_failures.jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(data.read_text().splitlines()[0] + "\n{oops\n")
    refused = upstream(home, "reports", "file", "--model", "tiny", "--jsonl", str(bad))
    assert refused.returncode == 2 and "line 2: not JSON" in refused.stderr
    assert json.loads(upstream(home, "reports", "list", "--json").stdout)["reports"] == []

    partial = upstream(
        home, "reports", "file", "--model", "tiny", "--jsonl", str(bad), "--skip-invalid", "--json"
    )
    assert partial.returncode == 0, partial.stderr
    out = json.loads(partial.stdout)
    assert len(out["filed"]) == 1 and out["invalid"][0]["line"] == 2
    [result] = out["reproduction"]["reports"].values()
    assert result["status"] == "reproduced"  # the tiny model never says "Canberra"

    by_bo = [
        *("reports", "file", "--model", "tiny", "--prompt", "hi"),
        *("--expect", '{"type": "exact", "value": "hello"}', "--tag", "greeting"),
        *("--max-new-tokens", "4", "--as", "bo", "--json"),
    ]
    nobody = upstream(home, *by_bo)  # `--as` names an account, never makes one
    assert nobody.returncode == 2 and "no user 'bo'" in nobody.stderr
    assert upstream(home, "users", "add", "bo", "--role", "reporter").returncode == 0
    one = upstream(home, *by_bo)
    assert one.returncode == 0, one.stderr
    report_id = json.loads(one.stdout)["filed"][0]["id"]
    shown = upstream(home, "reports", "show", str(report_id))
    assert "FAIL" in shown.stdout and "greeting" in shown.stdout and "bo" in shown.stdout
    confirmed = upstream(home, "reports", "confirm", str(report_id), "--json")  # the owner
    assert json.loads(confirmed.stdout)["reports"][0]["status"] == "confirmed"
    bad_check = upstream(
        home,
        "reports",
        "file",
        "--model",
        "tiny",
        "--prompt",
        "x",
        "--expect",
        '{"type": "regex", "pattern": "("}',
    )
    assert bad_check.returncode == 2 and "report.expected.pattern" in bad_check.stderr
    clusters = json.loads(upstream(home, "reports", "list", "--clusters", "--json").stdout)
    assert {c["size"] for c in clusters["clusters"]} == {1}


def test_suites_eval_compare_from_the_command_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    home = tmp_path / "home"
    upstream(home, "models", "import", str(tiny_model_dir), "--name", "tiny")
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": f"question {i}",
                    "expected": {"type": "max_words", "value": 2},
                    "tags": ["short"],
                }
            )
            + "\n"
            for i in range(10)
        )
    )
    imported = upstream(
        home, "suites", "import", "short", "--jsonl", str(cases), "--model", "tiny", "--json"
    )
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["cases"] == 10
    first = json.loads(
        upstream(home, "eval", "tiny", "--suite", "short", "--max-new-tokens", "3", "--json").stdout
    )
    again = json.loads(
        upstream(home, "eval", "tiny", "--suite", "short", "--max-new-tokens", "3", "--json").stdout
    )
    assert (first["generated"], again["generated"]) == (10, 0)
    assert first["metrics"] == again["metrics"]
    jobs = json.loads(upstream(home, "jobs", "list", "--json").stdout)["jobs"]
    assert [j["kind"] for j in jobs][:2] == ["evals.run", "evals.run"]
    shown = json.loads(upstream(home, "jobs", "show", str(jobs[0]["id"]), "--json").stdout)
    assert {k: shown[k] for k in ("id", "kind", "state")} == {
        "id": jobs[0]["id"],
        "kind": "evals.run",
        "state": "done",
    }
    assert shown["result"]["generated"] == 0  # the second run, all cached
    followed = upstream(home, "jobs", "show", str(jobs[0]["id"]), "--follow")
    assert followed.returncode == 0 and f"job {jobs[0]['id']} evals.run: done" in followed.stdout
    missing = upstream(home, "jobs", "show", "999")
    assert (missing.returncode, missing.stderr.strip()) == (2, "error: no job 999")
    too_long = upstream(home, "eval", "tiny", "--suite", "short", "--max-new-tokens", "4097")
    assert too_long.returncode == 2 and "less than or equal to 4096" in too_long.stderr
    human = upstream(home, "compare", "tiny", "tiny", "--suite", "short", "--max-new-tokens", "3")
    assert human.returncode == 0 and "McNemar" in human.stdout and "can detect" in human.stdout
    board = json.loads(upstream(home, "leaderboard", "--json").stdout)["leaderboard"]
    assert board[0]["suite"] == "short" and board[0]["all"]["n"] == 10
    exported = upstream(
        home,
        "suites",
        "export",
        "short",
        "--format",
        "jsonl",
        "--out",
        str(tmp_path / "out"),
        "--json",
    )
    assert exported.returncode == 0, exported.stderr
    assert (tmp_path / "out" / "cases.jsonl").read_text().count("\n") == json.loads(
        exported.stdout
    )["cases"]
    bad = upstream(home, "eval", "tiny", "--suite", "nope")
    assert bad.returncode == 2 and "unknown suite" in bad.stderr
