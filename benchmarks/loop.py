"""The whole loop on the bundled model, on three families of ignored instructions.

    python -m benchmarks.loop [--home DIR] [--methods linear,ties] [--families one_word,number]

Each family under benchmarks/families/ has three files kept apart: `reports.jsonl` (the
failures a user files), `train.jsonl` (the examples a contributor sends) and
`unseen.jsonl` (prompts of the same family that nobody reported, used only here, after
the release, to judge it). The loop, in a fresh hub, as a user would run it:

1. import the bundled SmolLM2-135M-Instruct (its guard suite comes with it);
2. file each family's reports, reproduce them, a maintainer confirms them;
3. build one suite per family from the confirmed reports;
4. one dataset contribution per family (claiming that family's reports), trained with
   the default recipe and checked by the CI, then approved;
5. release all of them together with the release search (`release --search`);
6. evaluate base and release on the unseen prompts of each family.

Prints, per family: unseen pass rate before and after, knowledge kept and lost (of the
unseen cases whose expected answer the base states somewhere in its long answer), the
guard cases its contribution broke alone, its retention in the release, and the time
of each stage. Nothing here is tuned on the unseen prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MODEL = "smollm2-135m-instruct"
FAMILIES_DIR = Path(__file__).parent / "families"
FAMILIES = ("one_word", "number", "yes_no")
REPORTER, CONTRIBUTOR = "ana", "bo"


def family_files(name: str) -> dict[str, Path]:
    d = FAMILIES_DIR / name
    return {k: d / f"{k}.jsonl" for k in ("reports", "train", "unseen")}


def run_loop(home: Path, families: list[str], methods: list[str] | None) -> dict[str, Any]:
    from upstream import accounts, contributions, releases, reports, suites
    from upstream.comparisons import compare
    from upstream.guard import GUARD_MAX_NEW_TOKENS
    from upstream.hub import Hub
    from upstream.reproduction import reproduce
    from upstream.triage import confirm

    hub = Hub.open(home)
    me = accounts.owner(hub)  # the hub's owner, an admin: confirms, approves, releases
    for name, role in ((REPORTER, "reporter"), (CONTRIBUTOR, "contributor")):
        accounts.add_user(hub, me, name, role)
    reporter, contributor = (
        accounts.authenticate(hub, accounts.create_token(hub, me, name)["token"])
        for name in (REPORTER, CONTRIBUTOR)
    )
    times: dict[str, float] = {}
    out: dict[str, Any] = {"families": {}, "times": times}

    def stage(name: str, started: float) -> None:
        times[name] = time.perf_counter() - started

    t = time.perf_counter()
    hub.jobs.run_foreground("models.import", {"source": f"bundled:{MODEL}", "name": MODEL}, None)
    stage("import", t)

    t = time.perf_counter()
    filed: dict[str, list[int]] = {}
    for fam in families:
        good, bad = reports.parse_jsonl(family_files(fam)["reports"].read_bytes(), MODEL)
        assert not bad, bad
        filed[fam] = [f.id for f in reports.submit(hub, good, reporter, "cli").filed]
    all_ids = [i for ids in filed.values() for i in ids]
    reproduced = reproduce(hub, all_ids, None)["reports"]
    for i in all_ids:
        confirm(hub, i, me)
    stage("file, reproduce, confirm", t)

    t = time.perf_counter()
    for fam in families:
        suites.build_from_reports(hub, me, fam.replace("_", "-"), fam.replace("_", "-"), MODEL)
    stage("suites", t)

    t = time.perf_counter()
    prs: dict[str, int] = {}
    for fam in families:
        data = contributions.ContributionIn(
            MODEL,
            f"Follow the {fam.replace('_', '-')} instruction",
            contributions.Content(dataset=family_files(fam)["train"].read_bytes()),
            filed[fam],
        )
        opened = contributions.open_contribution(hub, data, contributor, attempts=1)
        pr = opened["id"]
        hub.jobs.run_now(opened["job"])  # the checks it queued
        with hub.session() as s:
            detail = contributions.contribution_detail(contributions.get_contribution(s, pr), me)
        guard = next(r for r in detail["checks"]["suites"] if r["kind"] == "guard")
        claims = next((r for r in detail["checks"]["suites"] if r["kind"] == "claims"), None)
        out["families"][fam] = {
            "reports": len(filed[fam]),
            "reproduced": sum(reproduced[i]["result"] == "reproduced" for i in filed[fam]),
            "contribution": pr,
            "verdict": detail["state"],
            "reasons": detail["checks"]["reasons"],
            "claims_fixed": claims["splits"]["all"]["fixed_count"] if claims else 0,
            "guard_broken_alone": guard["splits"]["all"]["broken_count"],
            "training_seconds": detail["training"]["seconds"],
        }
        if detail["state"] == "passed":
            contributions.approve(hub, pr, me, "benchmark")
        else:  # measured anyway: the table says it failed
            contributions.approve(hub, pr, me, override="benchmark: measured despite the checks")
        prs[fam] = pr
    stage("contributions (train + CI)", t)

    t = time.perf_counter()
    search = releases.search_release(hub, MODEL, list(prs.values()), me, False, methods)
    stage("release search", t)
    out["search"] = [
        {k: c[k] for k in ("id", "candidate", "passed", "figures")} for c in search["candidates"]
    ]
    chosen = next(
        (c for c in search["candidates"] if c["id"] is not None and c["id"] == search["chosen"]),
        None,
    )
    shipped = search["release"]
    # judged on the unseen prompts: the shipped release, or the best-kept candidate
    built = [c for c in search["candidates"] if c["id"] is not None]
    subject = shipped or chosen or max(built, key=releases._search_key)
    out["release"] = {
        "id": subject["id"],
        "candidate": next(c["candidate"] for c in search["candidates"] if c["id"] == subject["id"]),
        "state": subject["state"],
        "tag": subject["tag"],
        "passed": subject["passed"],
        "reasons": subject["reasons"],
    }

    t = time.perf_counter()
    base_ref, new_ref = f"{MODEL}@{subject['base']}", f"{MODEL}@{subject['revision']}"
    for fam in families:
        name = f"unseen-{fam.replace('_', '-')}"
        cases = suites.read_cases(family_files(fam)["unseen"], hub.settings.max_prompt_chars)
        suites.add_cases(hub, name, cases, MODEL, heldout_percent=0, note="benchmark only")
        cmp = compare(hub, base_ref, new_ref, name, max_new_tokens=48, viewer=me)
        d = cmp["splits"]["all"]
        k = d.get("knowledge", {})
        retention = subject["retention"].get(str(prs[fam]), {})
        out["families"][fam].update(
            unseen=d["n"],
            before=d["base_rate"],
            after=d["cand_rate"],
            knew=k.get("knew"),
            kept=k.get("kept"),
            lost=k.get("lost_count"),
            retention=retention.get("retention"),
            retained=f"{retention.get('retained', 0)}/{retention.get('fixed_alone', 0)}",
        )
    out["release"]["guard_broken"] = subject["figures"]["guard_broken"]
    out["release"]["guard_tokens"] = GUARD_MAX_NEW_TOKENS
    stage("unseen evaluation", t)
    hub.close()
    return out


def print_report(out: dict[str, Any], console: Console) -> None:
    from upstream.cli.releases import candidates_table

    table = Table(
        "family",
        "CI alone",
        "guard broken alone",
        "unseen before",
        "unseen after",
        "knew",
        "kept",
        "lost",
        "retention",
        title="per family (unseen prompts: never reported, never trained on)",
    )
    for fam, f in out["families"].items():
        table.add_row(
            fam,
            f["verdict"],
            str(f["guard_broken_alone"]),
            f"{f['before']:.0%}",
            f"{f['after']:.0%}",
            str(f["knew"]),
            str(f["kept"]),
            str(f["lost"]),
            f"{f['retained']}" + (f" ({f['retention']:.0%})" if f["retention"] is not None else ""),
        )
    console.print(table)
    search = candidates_table(out["search"], out["release"]["id"])
    console.print(search)
    r = out["release"]
    console.print(
        f"release {r['id']} ({r['candidate']}): {r['state']} {r['tag'] or ''}; "
        f"guard cases broken {r['guard_broken']}"
    )
    for reason in r["reasons"]:
        console.print(f"  {reason}", markup=False, highlight=False)
    times = Table("stage", "seconds", title="time per stage")
    for name, seconds in out["times"].items():
        times.add_row(name, f"{seconds:.0f}")
    total = sum(out["times"].values())
    times.add_row("whole loop", f"{total:.0f}")
    times.add_row("whole loop without the import", f"{total - out['times']['import']:.0f}")
    console.print(times)
    console.print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="Hub directory (default: a fresh temp dir).")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--methods", default="", help="Narrow the release search.")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="upstream-loop-"))
    families = [f for f in args.families.split(",") if f]
    methods = [m for m in args.methods.split(",") if m] or None
    out = run_loop(home, families, methods)
    print_report(out, Console(width=120))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
