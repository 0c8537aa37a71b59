"""Filing, reproduction, duplicates and triage, on the tiny model."""

import json
from pathlib import Path

import pytest

from tests.people import owner, person
from upstream import reports as domain
from upstream.access import ANONYMOUS
from upstream.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from upstream.hub import Hub
from upstream.reproduction import reproduce, rescore
from upstream.triage import close, confirm

DATA = Path(__file__).parent / "data"
NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}
ALWAYS = {"type": "max_words", "value": 10_000}


def file_one(hub: Hub, reporter: str = "ana", **fields) -> domain.Filed:
    """File one report as `reporter` (an account with the reporter role, made if missing)."""
    data = {
        "model": "tiny",
        "prompt": "What is the capital of France?",
        "max_new_tokens": 6,
        **fields,
    }
    actor = person(hub, reporter, "reporter")
    return domain.submit_one(hub, domain.parse_report(data), actor, "cli").filed[0]


def detail(hub: Hub, report_id: int) -> dict:
    with hub.session() as s:
        return domain.report_detail(s, domain.get_report(s, report_id))


def test_reproduction_sets_the_result_and_stores_outputs(tiny_hub: Hub) -> None:
    failing = file_one(tiny_hub, expected=NEVER)
    passing = file_one(tiny_hub, prompt="hi", expected=ALWAYS)
    unchecked = file_one(tiny_hub, prompt="Write a story")
    mixed = file_one(
        tiny_hub,
        prompt="List three fruits",
        expected=NEVER,
        variants=["Name three fruits", {"prompt": "Fruits?", "expected": ALWAYS}],
    )
    out = reproduce(tiny_hub, [failing.id, passing.id, unchecked.id, mixed.id])["reports"]
    assert out[failing.id]["result"] == "reproduced"
    assert out[passing.id]["result"] == "not_reproduced"
    assert out[unchecked.id]["result"] == "needs_check"
    d = detail(tiny_hub, mixed.id)
    assert d["status"] == "reproduced" and d["reproduction_rate"] == pytest.approx(2 / 3)
    assert [v["passed"] for v in d["variants"]] == [False, False, True]
    assert all(v["output"] for v in d["variants"])
    assert d["observed"] == d["variants"][0]["output"]  # generated when not given
    assert [(e["from"], e["to"]) for e in d["events"]] == [("", "new"), ("new", "reproduced")]
    # each reproduction is kept with its outputs; judging stored outputs again is not one
    [first] = d["reproductions"]
    assert first["rate"] == pytest.approx(2 / 3)
    assert [(o["position"], o["output"], o["passed"]) for o in first["outputs"]] == [
        (v["position"], v["output"], v["passed"]) for v in d["variants"]
    ]
    rescore(tiny_hub, [mixed.id], owner(tiny_hub), ALWAYS)
    reproduce(tiny_hub, [mixed.id])
    again = detail(tiny_hub, mixed.id)["reproductions"]
    assert len(again) == 2 and again[1] == first  # newest first
    assert again[0]["rate"] == 0.0 and all(o["passed"] for o in again[0]["outputs"])


def test_same_content_twice_is_one_report_with_two_reporters(tiny_hub: Hub) -> None:
    first = file_one(tiny_hub, "ana", expected=NEVER)
    # whitespace and case do not make a different report
    again = file_one(tiny_hub, "bo", prompt="what is the  CAPITAL of France?", expected=NEVER)
    assert (again.id, again.created) == (first.id, False)
    d = detail(tiny_hub, first.id)
    assert (d["filings"], d["reporters"]) == (2, 2)
    other_check = file_one(tiny_hub, "bo", expected=ALWAYS)
    assert other_check.created and other_check.id != first.id


def test_paraphrases_of_three_failures_form_three_clusters(tiny_hub: Hub) -> None:
    good, bad = domain.parse_jsonl((DATA / "paraphrased_failures.jsonl").read_bytes(), "tiny")
    assert len(good) == 20 and bad == []
    submission = domain.submit(tiny_hub, good, person(tiny_hub, "ana", "reporter"), "import")
    assert len(submission.to_reproduce) == 20 and submission.job is not None
    with tiny_hub.session() as s:
        groups = domain.clusters(domain.list_reports(s, domain.ReportQuery(limit=1000)))
        tags = {r.id: r.tags for r in domain.list_reports(s, domain.ReportQuery(limit=1000))}
    assert sorted(g["size"] for g in groups) == [6, 7, 7]
    for g in groups:  # each cluster holds the paraphrases of exactly one failure
        assert (
            len({next(t for t in tags[i] if t.startswith("failure-")) for i in g["reports"]}) == 1
        )
    # the dashboard's grouping (id columns only) and the tracker's cluster filter agree
    with tiny_hub.session() as s:
        assert domain.open_clusters(s, owner(tiny_hub)) == groups
        for g in groups:
            member = g["reports"][-1]
            assert domain.cluster_ids(s, member) == set(g["reports"])
            listed = domain.list_reports(s, domain.ReportQuery(cluster=member, limit=100))
            assert sorted(r.id for r in listed) == g["reports"]


def test_a_bad_jsonl_is_refused_whole_with_every_line_listed(tiny_hub: Hub, tmp_path: Path) -> None:
    lines = [
        json.dumps({"prompt": "fine", "expected": NEVER}),
        "{not json",
        json.dumps({"prompt": "x", "colour": "red"}),
        json.dumps({"model": "nope", "prompt": "x"}),
        json.dumps({"prompt": "x", "expected": {"type": "regex", "pattern": "(unclosed"}}),
        json.dumps({"prompt": "   "}),
        json.dumps({"prompt": "x" * 40_000}),
        json.dumps({"prompt": "also fine"}),
    ]
    raw = ("\n".join(lines) + "\n").encode()
    good, bad = domain.parse_jsonl(raw, "tiny")
    ana = person(tiny_hub, "ana", "reporter")
    with pytest.raises(InvalidInput) as refused:
        domain.submit(tiny_hub, good, ana, "cli", invalid=bad)
    message = str(refused.value)
    for n, reason in [
        (2, "not JSON"),
        (3, "colour: unknown field"),
        (4, "unknown model 'nope'"),
        (5, "bad regex"),
        (6, "is empty"),
        (7, "the limit is 32000"),
    ]:
        assert f"line {n}: " in message and reason in message, (n, message)
    assert "6 invalid report(s), nothing filed" in message
    with tiny_hub.session() as s:
        assert domain.list_reports(s, domain.ReportQuery()) == []
    partial = domain.submit(tiny_hub, good, ana, "cli", skip_invalid=True, invalid=bad)
    assert len(partial.filed) == 2 and [n for n, _ in partial.invalid] == [2, 3, 4, 5, 6, 7]


def test_non_utf8_and_separator_characters_are_judged_per_line() -> None:
    raw = b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n{"prompt": "a\xe2\x80\xa8b"}\n'
    good, bad = domain.parse_jsonl(raw, "tiny")
    assert [n for n, _ in good] == [1, 3]  # U+2028 inside a JSON string is not a line break
    assert bad[0][0] == 2 and "not UTF-8" in bad[0][1]


def test_jsonl_defaults_fill_what_lines_leave_out() -> None:
    raw = b'{"prompt": "a", "tags": ["x"]}\n{"prompt": "b", "expected": {"type": "json"}}\n'
    good, _ = domain.parse_jsonl(raw, "tiny", {"tags": ["batch"], "expected": NEVER})
    assert good[0][1].tags == ["batch", "x"] and good[0][1].expected == NEVER
    assert good[1][1].expected == {"type": "json"}


def test_unknown_revision_and_bad_check_name_the_field(tiny_hub: Hub) -> None:
    with pytest.raises(NotFound, match="report.model: tiny@ffffff"):
        file_one(tiny_hub, model="tiny@ffffff")
    with pytest.raises(InvalidInput, match=r"report.variants\[0\].expected.type 'fuzzy'"):
        file_one(tiny_hub, variants=[{"prompt": "x", "expected": {"type": "fuzzy"}}])
    with pytest.raises(InvalidInput, match="severity"):
        file_one(tiny_hub, severity="apocalyptic")
    anonymous = domain.parse_report({"model": "tiny", "prompt": "who am I?"})
    with pytest.raises(Unauthorized, match="sign in to file reports"):
        domain.submit_one(tiny_hub, anonymous, ANONYMOUS, "api")


def test_triage_maintainer_and_three_people(tiny_hub: Hub) -> None:
    hub = tiny_hub
    mia = person(hub, "mia", "maintainer", model="tiny")  # a maintainer of this model only
    ana, bo, cy, di = (person(hub, n, "reporter") for n in ("ana", "bo", "cy", "di"))
    direct = file_one(hub, "ana", expected=NEVER)
    assert confirm(hub, direct.id, mia)["status"] == "confirmed"

    crowd = file_one(hub, "ana", prompt="hi", expected=NEVER)
    with pytest.raises(Unauthorized):
        confirm(hub, crowd.id, ANONYMOUS)
    with pytest.raises(Forbidden, match="ana may not confirm"):
        confirm(hub, crowd.id, ana)
    assert confirm(hub, crowd.id, bo)["status"] == "new"
    with pytest.raises(Conflict, match="already confirmed"):
        confirm(hub, crowd.id, bo)
    assert confirm(hub, crowd.id, cy)["status"] == "new"
    final = confirm(hub, crowd.id, di)
    assert final["status"] == "confirmed" and final["confirmations"] == ["bo", "cy", "di"]
    history = detail(hub, crowd.id)["events"]
    assert history[-1]["actor"] == "di" and history[-1]["to"] == "confirmed"

    with pytest.raises(Forbidden, match="only a maintainer of tiny or its owner may close"):
        close(hub, direct.id, bo, "not a bug")
    assert close(hub, direct.id, mia, "by design")["status"] == "wontfix"
    dup = file_one(hub, "ed", prompt="Write a story", expected=NEVER)
    assert close(hub, dup.id, mia, "same", crowd.id)["status"] == "duplicate"
    with pytest.raises(Conflict, match="is duplicate; only open reports"):
        confirm(hub, dup.id, mia)


def test_list_filters(tiny_hub: Hub) -> None:
    a = file_one(tiny_hub, tags=["capitals"], severity="high", description="says Lyon")
    b = file_one(tiny_hub, prompt="hi", tags=["greeting"])
    with tiny_hub.session() as s:

        def ids(**q) -> list[int]:
            return [r.id for r in domain.list_reports(s, domain.ReportQuery(**q))]

        assert ids(tag="capitals") == [a.id]
        assert ids(severity="high") == [a.id]
        assert ids(text="lyon") == [a.id]
        assert ids(text="capital of france") == [a.id]
        assert ids(model="tiny") == [b.id, a.id]
        assert ids(status="new") == [b.id, a.id]
        with pytest.raises(InvalidInput, match="status 'open'"):
            ids(status="open")


def test_rescoring_changes_the_verdict_without_generating(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream.engines import hf
    from upstream.reproduction import rescore

    filed = file_one(tiny_hub, expected=NEVER)
    reproduce(tiny_hub, [filed.id])
    output = detail(tiny_hub, filed.id)["variants"][0]["output"]

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("rescoring must not generate")

    monkeypatch.setattr(hf.HFEngine, "generate", no_generation)
    mia = person(tiny_hub, "mia", "maintainer")
    with pytest.raises(Forbidden, match="only a maintainer"):
        rescore(tiny_hub, [filed.id], person(tiny_hub, "ana"), {"type": "exact", "value": ""})
    result = rescore(tiny_hub, [filed.id], mia, {"type": "exact", "value": output})
    assert result["reports"][filed.id]["result"] == "not_reproduced"
    d = detail(tiny_hub, filed.id)
    assert d["status"] == "not_reproduced" and d["expected"]["value"] == output
    assert d["events"][-2]["kind"] == "check" and d["events"][-2]["actor"] == "mia"
    unrun = file_one(tiny_hub, prompt="never run", expected=NEVER)
    with pytest.raises(InvalidInput, match="not been reproduced yet"):
        rescore(tiny_hub, [unrun.id], mia)


def test_fixed_records_the_revision(tiny_hub: Hub) -> None:
    from upstream.triage import mark_fixed

    filed = file_one(tiny_hub, expected=NEVER)
    with pytest.raises(Conflict, match="can move to"):
        mark_fixed(tiny_hub, filed.id, 1, "release")  # only confirmed reports get fixed
    confirm(tiny_hub, filed.id, owner(tiny_hub))
    mark_fixed(tiny_hub, filed.id, 1, "release")
    with tiny_hub.session() as s:
        report = domain.get_report(s, filed.id)
        assert (report.status, report.fixed_in_revision_id) == ("fixed", 1)


def test_repeated_lines_in_one_file_keep_each_report_its_own_vector(tiny_hub: Hub) -> None:
    from upstream.embeddings import embed, from_bytes

    prompts = [
        "What is the capital of France?",
        "What is the capital of France?",
        "Write a poem about the sea",
        "How many legs does a spider have?",
    ]
    items = [
        (i + 1, domain.parse_report({"model": "tiny", "prompt": p})) for i, p in enumerate(prompts)
    ]
    filed = domain.submit(tiny_hub, items, person(tiny_hub, "ana", "reporter"), "import").filed
    assert filed[0].id == filed[1].id and not filed[1].created
    assert filed[2].similar_to is None and filed[3].similar_to is None
    with tiny_hub.session() as s:
        for f, p in zip(filed[2:], prompts[2:], strict=True):
            stored = from_bytes(domain.get_report(s, f.id).embedding or b"")
            assert float(stored @ embed([p])[0]) > 0.999


def test_only_open_reports_of_the_same_model_are_linked(
    tiny_hub: Hub, tiny_model_dir: Path
) -> None:
    from upstream.registry import import_model

    changed = tiny_model_dir  # same files under another name: another model
    import_model(tiny_hub, str(changed), "other")
    first = file_one(tiny_hub, "ana", prompt="What is the capital of Australia?")
    elsewhere = file_one(tiny_hub, "bo", model="other", prompt="Name Australia's capital.")
    assert elsewhere.similar_to is None
    close(tiny_hub, first.id, person(tiny_hub, "ana"), "my mistake")  # its reporter may
    after_close = file_one(tiny_hub, "bo", prompt="Name Australia's capital.")
    assert after_close.similar_to is None
    linked = file_one(tiny_hub, "cy", prompt="Which city is the capital of Australia?")
    assert linked.similar_to == after_close.id


def test_a_batch_over_two_models_links_each_report_as_filing_them_one_by_one_would(
    tiny_hub: Hub, tiny_model_dir: Path
) -> None:
    """One batch computes every model's distances in one product (`distances`); each
    report is still linked to its own model's nearest open report, a stored one or one
    earlier in the same batch."""
    from upstream.registry import import_model

    import_model(tiny_hub, str(tiny_model_dir), "other")
    stored_tiny = file_one(tiny_hub, "ana", prompt="What is the capital of Australia?")
    stored_other = file_one(tiny_hub, "ana", model="other", prompt="Write a haiku about rain")
    batch = [
        ("tiny", "Name Australia's capital."),  # near a stored report of its model
        ("other", "Name Australia's capital."),  # the same text, another model: none
        ("other", "Compose a haiku on the rain."),  # near a stored report of its model
        ("tiny", "Give me a haiku about rain"),  # near only the other model's
        ("tiny", "How many legs does a spider have?"),
        ("tiny", "How many legs has a spider got?"),  # near the one before it
    ]
    items = [
        (i + 1, domain.parse_report({"model": m, "prompt": p})) for i, (m, p) in enumerate(batch)
    ]
    filed = domain.submit(tiny_hub, items, person(tiny_hub, "bo", "reporter"), "import").filed
    links = [f.similar_to for f in filed]
    assert links == [stored_tiny.id, None, stored_other.id, None, None, filed[4].id]
    assert all(f.distance is None or 0 <= f.distance <= 0.2 for f in filed)


def test_a_refiling_of_known_content_is_not_embedded_again(tiny_hub: Hub) -> None:
    runs: list[list[str]] = []
    real = tiny_hub.embedder.run

    def counting(texts: list[str]) -> list[object]:
        runs.append(texts)
        return real(texts)

    tiny_hub.embedder.run = counting  # type: ignore[method-assign]
    ana = person(tiny_hub, "ana", "reporter")
    item = domain.parse_report({"model": "tiny", "prompt": "Is a whale a fish? Say yes or no."})
    first = domain.submit_one(tiny_hub, item, ana, "api").filed[0]
    again = domain.submit_one(tiny_hub, item, person(tiny_hub, "bo", "reporter"), "api")
    assert first.created and not again.filed[0].created and again.filed[0].id == first.id
    assert runs == [["Is a whale a fish? Say yes or no."]]  # only the first was embedded


def test_the_same_content_filed_at_once_is_one_report(tiny_hub: Hub) -> None:
    import threading

    from upstream.embeddings import embed

    embed(["warm up"])  # so both threads race on the database, not on loading
    results: list[domain.Filed] = []
    barrier = threading.Barrier(2)

    def go(user: str) -> None:
        barrier.wait()
        results.append(file_one(tiny_hub, user, prompt="a race", expected=NEVER))

    for u in ("ana", "bo"):  # the accounts exist before the race, which is on the report
        person(tiny_hub, u, "reporter")
    threads = [threading.Thread(target=go, args=(u,)) for u in ("ana", "bo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.id for r in results}) == 1
    assert detail(tiny_hub, results[0].id)["filings"] == 2


def test_text_search_is_literal_and_unicode(tiny_hub: Hub) -> None:
    cafe = file_one(tiny_hub, prompt="Spell café")
    file_one(tiny_hub, prompt="plain prompt")
    with tiny_hub.session() as s:
        assert [r.id for r in domain.list_reports(s, domain.ReportQuery(text="CAFÉ"))] == [cafe.id]
        assert domain.list_reports(s, domain.ReportQuery(text="_")) == []
        rev = domain.get_report(s, cafe.id).revision.hash
        assert len(domain.list_reports(s, domain.ReportQuery(model=f"tiny@{rev[:8]}"))) == 2


def test_duplicate_closing_is_checked(tiny_hub: Hub) -> None:
    a = file_one(tiny_hub, "ana", prompt="one")
    b = file_one(tiny_hub, "ana", prompt="two")
    c = file_one(tiny_hub, "ana", prompt="three")
    ana = person(tiny_hub, "ana")
    with pytest.raises(InvalidInput, match="another report of the same model"):
        close(tiny_hub, a.id, ana, "self", a.id)
    close(tiny_hub, b.id, ana, "same as one", a.id)
    with pytest.raises(InvalidInput, match="itself a duplicate"):
        close(tiny_hub, c.id, ana, "chain", b.id)


def test_a_prompt_holds_at_most_100_messages(tiny_hub: Hub) -> None:
    from upstream.reports import MAX_MESSAGES, parse_report, prepare

    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    fits = parse_report({"model": "tiny", "messages": turns * (MAX_MESSAGES // 2)})
    many = parse_report({"model": "tiny", "messages": turns * (MAX_MESSAGES // 2) + turns[:1]})
    with tiny_hub.session() as s:
        prepare(s, fits, tiny_hub.settings.max_prompt_chars)
        with pytest.raises(InvalidInput, match="101 messages; at most 100"):
            prepare(s, many, tiny_hub.settings.max_prompt_chars)


def test_single_filings_arriving_together_are_filed_together(tiny_hub: Hub) -> None:
    import threading
    import time

    from sqlalchemy import select

    from upstream.db.schema import Job

    people = [person(tiny_hub, f"r{k}", "reporter") for k in range(4)]
    results: dict[tuple[int, int], domain.Submission] = {}
    batches: list[int] = []
    original = tiny_hub.filings._run_next

    def counting() -> None:
        # Filings reach the queue one by one once their text is embedded: hold the first
        # batch until another waits behind it (they are then filed together).
        deadline = time.monotonic() + 10
        while not batches and len(tiny_hub.filings._waiting) < 2:
            assert time.monotonic() < deadline, "no second filing arrived"
            time.sleep(0.001)
        with tiny_hub.filings._lock:
            batches.append(min(len(tiny_hub.filings._waiting), tiny_hub.filings.max_batch))
        original()

    tiny_hub.filings._run_next = counting  # type: ignore[method-assign]
    start = threading.Barrier(len(people))

    def client(k: int) -> None:
        start.wait()
        for i in range(6):
            prompt = "the same prompt for all" if i == 0 else f"prompt {k}-{i}"
            item = domain.parse_report({"model": "tiny", "prompt": prompt, "expected": NEVER})
            results[(k, i)] = domain.submit_one(tiny_hub, item, people[k], "api")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(people))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 24
    shared = {results[(k, 0)].filed[0].id for k in range(4)}
    assert len(shared) == 1  # one report, filed four times
    with tiny_hub.session() as s:
        report = domain.get_report(s, shared.pop())
        assert sorted(f.reporter for f in report.filings) == ["r0", "r1", "r2", "r3"]
        own = {results[(k, i)].filed[0].id for k in range(4) for i in range(1, 6)}
        assert len(own) == 20
        jobs = list(s.scalars(select(Job).where(Job.kind == domain.REPRODUCE_JOB)))
    queued = sorted(i for j in jobs for i in j.args["reports"])
    assert len(queued) == 21 and len(set(queued)) == 21  # each new report once
    assert all(j.owner in {"r0", "r1", "r2", "r3"} for j in jobs)
    for (k, _), sub in results.items():  # each filer is told the job of their new report
        if sub.filed[0].created:
            job = next(j for j in jobs if j.id == sub.job)
            assert job.owner == f"r{k}" and sub.filed[0].id in job.args["reports"]
    assert max(batches) > 1, batches  # some filings shared a batch


def test_the_tag_filter_matches_whole_tags_in_any_script(tiny_hub: Hub) -> None:
    ana = person(tiny_hub, "ana", "reporter")
    for prompt, tags in [("¿Qué?", ["español"]), ("What?", ["spa"]), ("Wie?", ["deutsch"])]:
        item = domain.parse_report({"model": "tiny", "prompt": prompt, "tags": tags})
        domain.submit_one(tiny_hub, item, ana, "cli")
    with tiny_hub.session() as s:
        for tag, prompts in [("español", ["¿Qué?"]), ("spa", ["What?"]), ("ESPAÑOL", ["¿Qué?"])]:
            found = domain.list_reports(s, domain.ReportQuery(tag=tag))
            assert [domain.prompt_text(r.messages) for r in found] == prompts, tag
    with pytest.raises(InvalidInput, match="no quotes or backslashes"):
        domain.parse_report({"model": "tiny", "prompt": "x", "tags": ['a"b']})
