"""`upstream demo` on the real model: the whole loop runs and tells the truth."""

from pathlib import Path

import pytest
from rich.console import Console

from upstream.cli.common import progress_bar
from upstream.demo import run_demo

pytestmark = pytest.mark.smollm2


def test_the_demo_runs_the_loop_and_fixes_reports(tmp_path: Path) -> None:
    console = Console(record=True, width=120)
    result = run_demo(console, progress_bar, tmp_path / "demo")
    text = console.export_text()
    assert result["reports"] == 15 and result["reproduced"] >= 10
    release = result["release"]
    # measured: the contribution passes, v2 is released and fixes 12 of the 14 reports
    assert result["verdict"] == "passed" and release["state"] == "released"
    assert release["tag"] == "v2" and result["fixed"] >= 7
    assert f"{result['fixed']} of 15 reports are now fixed in v2" in text
    # a served answer's thumbs-down became a report that reproduces the answer exactly,
    # and the release fixes it (measured: it answers "Canberra")
    assert result["feedback_reproduced_exactly"] and result["feedback_fixed"]
    roles = {r["user"]: r["roles"] for r in result["credits"]}
    assert "fixed" in roles["ana"] and "contributor" in roles["bo"]
    steps = ("1. import", "2. ana files", "3. a user of app", "5. bo contributes", "7. the reports")
    for step in steps:
        assert step in text
