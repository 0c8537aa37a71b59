"""`upstream demo`: the whole loop on the bundled model, in a fresh temporary hub.

import → one-word failures filed and reproduced → an application's user gives a served
answer a thumbs-down with a correction, which becomes a report → confirmed → a suite built
from them → a dataset contribution (with the user's correction) trained and checked →
approved → released → the release fixes the reports → credits. Every step calls the same
domain functions as the CLI and the API and prints the real numbers it got. Four accounts
act, each with their own role: ana (a reporter) reports, app (a reporter: the account an
application serves its users through, with a token that consents to sharing) asks the
model, bo (a contributor) contributes, and you (the hub's owner, an admin) confirm,
approve and release.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from upstream import accounts, contributions, feedback, releases, reports, serving, suites
from upstream.credits import credits_table
from upstream.hub import Hub
from upstream.reproduction import reproduce
from upstream.triage import confirm

MODEL = "smollm2-135m-instruct"
DATA = Path(__file__).parent / "data"
REPORTER, CONTRIBUTOR, APP = "ana", "bo", "app"
# what the application's user asks, and what they say it should have answered
SERVED_QUESTION, CORRECTION = "What is the capital of Australia? Answer with one word.", "Canberra"
Progress = Callable[[float, float, str], None]


def run_demo(
    console: Console, progress: Callable[[str], Any], home: Path | None = None, keep: bool = False
) -> dict[str, Any]:
    """Run the loop; `progress(label)` gives a context manager yielding a progress callback."""

    made = home is None
    home = Path(tempfile.mkdtemp(prefix="upstream-demo-")) if home is None else home
    hub = Hub.open(home)
    owner = accounts.owner(hub)
    me = owner.name
    started = time.perf_counter()

    def step(n: int, title: str) -> None:
        elapsed = f"{time.perf_counter() - started:.0f} s"
        console.rule(Text.from_markup(f"[bold]{escape(f'{n}. {title}')}[/]  [dim]{elapsed}[/]"))

    try:
        step(1, f"import the bundled model into a fresh hub at {home}")
        with progress("importing") as update:
            hub.jobs.run_foreground(
                "models.import", {"source": f"bundled:{MODEL}", "name": MODEL}, update
            )
        console.print(f"{MODEL} imported, with its guard suite of ordinary instructions")
        for name, role in ((REPORTER, "reporter"), (CONTRIBUTOR, "contributor"), (APP, "reporter")):
            accounts.add_user(hub, owner, name, role)
        # each acts through an API token, as they would over HTTP: ana's may only report
        ana, bo = (
            accounts.authenticate(hub, accounts.create_token(hub, owner, name, scopes)["token"])
            for name, scopes in ((REPORTER, ["read", "report"]), (CONTRIBUTOR, None))
        )
        app = accounts.authenticate(
            hub, accounts.create_token(hub, owner, APP, ["read"], consent=True)["token"]
        )
        console.print(
            f"accounts: {me} (admin, the owner), {REPORTER} (reporter), {CONTRIBUTOR} "
            f"(contributor) and {APP} (an application's account), each with an API token"
        )

        step(2, f"{REPORTER} files one-word failures; the hub reproduces them")
        good, _ = reports.parse_jsonl((DATA / "one_word_failures.jsonl").read_bytes(), MODEL)
        submission = reports.submit(hub, good, ana, "cli")
        ids = [f.id for f in submission.filed]
        with progress("reproducing") as update:
            results = reproduce(hub, ids, update)["reports"]
        reproduced = sum(r["result"] == "reproduced" for r in results.values())
        with hub.session() as s:
            first = reports.get_report(s, ids[0])
            example = (reports.prompt_text(first.messages), first.observed or "")
        console.print(f"{len(ids)} reports filed, {reproduced} reproduced. For example:")
        console.print(f"  asked  {example[0]!r}\n  it said {example[1]!r}", highlight=False)

        step(3, f"a user of {APP} gets a long answer, clicks thumbs-down and types the right one")
        served, from_feedback = _served_and_corrected(hub, app)
        with progress("reproducing") as update:
            reproduced_fb = reproduce(hub, [from_feedback], update)["reports"][from_feedback]
        with hub.session() as s:
            fb_report = reports.get_report(s, from_feedback)
            same = fb_report.variants[0].output == served
        console.print(f"  asked  {SERVED_QUESTION!r}\n  it said {served!r}", highlight=False)
        console.print(
            f"POST /v1/feedback with the answer's own feedback token: value -1, correction "
            f"{CORRECTION!r} → report {from_feedback}; reproduced on the same revision: "
            f"{'the same answer, exactly' if same else 'a different answer'}, "
            f"{reproduced_fb['result']}"
        )
        ids.append(from_feedback)

        step(4, f"{me} (the owner) confirms them and builds a suite")
        for i in ids:
            confirm(hub, i, owner)
        built = suites.build_from_reports(hub, owner, "one-word", "one-word", MODEL)
        with hub.session() as s:
            summary = suites.suite_summary(s, suites.get_suite(s, "one-word"))
        console.print(
            f"suite one-word v{built['version']}: {summary['cases']} cases, "
            f"{summary['public']} public and {summary['heldout']} held out"
        )

        step(5, f"{CONTRIBUTOR} contributes 25 one-word answers, and the user's correction")
        # the owner exports what users corrected (`upstream feedback export --format chat`)
        corrections = feedback.export(hub, owner, "chat", MODEL)
        answers = (DATA / "one_word_answers.jsonl").read_bytes() + b"".join(
            json.dumps({"messages": line["messages"]}).encode() + b"\n" for line in corrections
        )
        data = contributions.ContributionIn(
            MODEL,
            "Answer one-word questions in one word",
            contributions.Content(dataset=answers),
            ids,
        )
        opened = contributions.open_contribution(hub, data, bo, attempts=1)
        pr = opened["id"]
        with progress("checking") as update:
            hub.jobs.run_now(opened["job"], update)
        with hub.session() as s:
            detail = contributions.contribution_detail(contributions.get_contribution(s, pr), owner)
        t = detail["training"]
        console.print(
            f"trained a LoRA in {t['seconds']:.0f} s ({t['steps']} steps, loss "
            f"{t['first_loss']:.2f} → {t['last_loss']:.2f}); checks: {detail['state']}"
        )
        for reason in detail["checks"]["reasons"]:
            console.print(f"  {reason}", highlight=False)

        step(6, f"{me} approves it; the release search builds the candidates and ships the best")
        if detail["state"] == "passed":
            contributions.approve(hub, pr, owner, "thanks!")
        else:  # the guard is strict; the demo goes on, and says so
            contributions.approve(hub, pr, owner, override="demo: approved despite the checks")
        with progress("searching for the best release") as update:
            search = releases.search_release(hub, MODEL, [pr], owner, progress=update)
        for c in search["candidates"]:
            f = c["figures"]
            kept = ", ".join("–" if v is None else f"{v:.0%}" for v in f["retention"].values())
            mark = "→" if c["id"] is not None and c["id"] == search["chosen"] else " "
            console.print(
                f" {mark} {c['candidate']:<24} {'passed' if c['passed'] else 'failed':<7}"
                f" {f['fixed']} fixed, {f['broken']} broken, {f['knowledge_lost']} knowledge"
                f" lost, {f['guard_broken']} guard broken; retention {kept}",
                highlight=False,
            )
        release = search["release"] or next(
            (c for c in search["candidates"] if c["id"] == search["chosen"]),
            search["candidates"][0],
        )
        console.print(
            f"release {release['tag'] or '(candidate)'}: "
            f"{MODEL}@{(release['revision'] or 'none')[:12]}, {release['state']}"
        )
        for reason in release["reasons"]:
            console.print(f"  {reason}", highlight=False)

        step(7, "the reports it fixed, and the credits")
        with hub.session() as s:
            fixed = [r for r in (reports.get_report(s, i) for i in ids) if r.status == "fixed"]
            credits = credits_table(s, MODEL)
        console.print(
            f"{len(fixed)} of {len(ids)} reports are now fixed in "
            f"{release['tag'] or 'the candidate'}"
        )
        fb_fixed = any(r.id == from_feedback for r in fixed)
        console.print(
            f"the thumbs-down's report {from_feedback} is "
            + ("fixed: the release answers it" if fb_fixed else "not fixed by this release")
        )
        for r in credits:
            roles = ", ".join(f"{n} {role}" for role, n in sorted(r["roles"].items()))
            console.print(f"  {r['user']:<10} {r['points']:>5g} points  ({roles})", highlight=False)
        console.rule(Text(f"done in {time.perf_counter() - started:.0f} s", style="bold"))
        if keep or not made:
            console.print(
                f"the hub is kept at {home}: try `UPSTREAM_HOME={home} upstream prs show {pr}` "
                f"or `upstream models export {MODEL}@latest --out ./fixed`"
            )
        return {
            "home": str(home),
            "reports": len(ids),
            "reproduced": reproduced,
            "feedback_report": from_feedback,
            "feedback_reproduced_exactly": same and reproduced_fb["result"] == "reproduced",
            "feedback_fixed": fb_fixed,
            "contribution": pr,
            "verdict": detail["state"],
            "release": release,
            "fixed": len(fixed),
            "credits": credits,
        }
    finally:
        hub.close()
        if made and not keep:
            shutil.rmtree(home, ignore_errors=True)


def _served_and_corrected(hub: Hub, app: Any) -> tuple[str, int]:
    """Serve SERVED_QUESTION to `app` (as /v1/chat/completions does) and send a user's
    thumbs-down with CORRECTION using only the answer's feedback token; (the answer, the
    report the feedback filed)."""
    question = [{"role": "user", "content": SERVED_QUESTION}]
    body = serving.ChatIn.model_validate({"model": MODEL, "messages": question, "max_tokens": 48})
    pending = serving.start_chat(hub, app, body)
    done = serving.finish_chat(hub, pending, serving.wait(hub, pending))
    browser = serving.authenticate_token(hub, done["feedback_token"])  # no API key
    sent = feedback.give(
        hub,
        browser,
        feedback.FeedbackIn.model_validate(
            {
                "response_id": done["id"],
                "value": -1,
                "correction": CORRECTION,
                "comment": "one word, please",
            }
        ),
    )
    assert sent["report_id"] is not None
    return str(done["choices"][0]["message"]["content"]), int(sent["report_id"])
