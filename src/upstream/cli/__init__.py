"""The `upstream` command line: thin commands over the domain functions."""

from __future__ import annotations

import sys

import typer

from upstream.cli import accounts, contributions, feedback, models, releases, reports, suites
from upstream.cli import hub as hub_commands
from upstream.cli.common import err_console
from upstream.cli.generate import generate
from upstream.errors import UpstreamError

app = typer.Typer(
    help="Upstream: report model failures, evaluate fixes, merge them into releases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(hub_commands.init)
app.command()(hub_commands.up)
app.command()(hub_commands.worker)
app.command()(hub_commands.fsck)
app.command()(generate)
app.add_typer(models.app, name="models")
app.add_typer(reports.app, name="reports")
app.add_typer(suites.app, name="suites")
app.command("eval")(suites.eval_)
app.command("compare")(suites.compare)
app.command("leaderboard")(suites.leaderboard)
app.command("contribute")(contributions.contribute)
app.add_typer(contributions.app, name="prs")
app.command("release")(releases.release)
app.command("credits")(releases.credits)
app.command("demo")(releases.demo)
app.add_typer(hub_commands.jobs_app, name="jobs")
app.add_typer(accounts.users_app, name="users")
app.add_typer(accounts.tokens_app, name="tokens")
app.add_typer(feedback.app, name="feedback")


def main() -> None:
    """Entry point: user mistakes print one line and exit 2; bugs keep their traceback."""
    import warnings

    # peft calls a transformers property that transformers 5 marks deprecated; the notice
    # is theirs to fix and says nothing to a user of ours.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
    try:
        app()
    except UpstreamError as e:
        from rich.markup import escape

        err_console.print(f"[red]error:[/] {escape(str(e))}", markup=True, highlight=False)
        _exit(2)
    except KeyboardInterrupt:
        _exit(130)
    except SystemExit as e:  # how typer ends every command
        _exit(e.code)


def _exit(code: str | int | None) -> None:
    """Exit with `code`; after a model was loaded, without tearing the interpreter down.

    Unloading torch, transformers and a model's tensors module by module took 0.9 s
    after every command that generated (docs/benchmarks.md). Everything the command
    wrote is committed by then; the exit handlers still run and the streams are flushed.
    """
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if "torch" not in sys.modules or any(not t.daemon for t in others):
        sys.exit(code)  # nothing slow to skip, or a thread whose end must be waited for
    import atexit
    import os

    status = code if isinstance(code, int) else (0 if code is None else 1)
    if isinstance(code, str):
        print(code, file=sys.stderr)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader that went away, a closed stream
            status = status or 1
    os._exit(status)
