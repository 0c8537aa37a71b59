"""The API tried as an attacker would, over real HTTP: each hole found is a test here.

Every refusal is a 4xx in the one error shape, and nothing already stored is lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.people import bearer, owner, person
from tests.server.conftest import serve
from upstream import suites
from upstream.hub import Hub
from upstream.registry import import_model
from upstream.reports import ReportQuery, get_report, list_reports, parse_report, submit_one

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}


@pytest.fixture
def api(tiny_hub: Hub) -> Iterator[str]:
    with serve(tiny_hub) as url:
        yield url


def _error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"], r.text
    assert set(error) == {"code", "message", "field"}
    return error


def test_malformed_and_oversized_bodies_get_the_one_error_shape(api: str, tiny_hub: Hub) -> None:
    ana = bearer(tiny_hub, "ana", "reporter")
    json_headers = {**ana, "Content-Type": "application/json"}
    r = httpx.post(
        f"{api}/api/reports", content=b'{"model": "tiny", "prompt": ', headers=json_headers
    )
    _error(r, 400, "malformed_json")
    for deep in ("[" * 5000 + "]" * 5000, '{"a":' * 40 + "1" + "}" * 40):
        r = httpx.post(f"{api}/api/reports", content=deep.encode(), headers=json_headers)
        assert "deeper than 32 levels" in _error(r, 422, "invalid_input")["message"]
    big = b'{"model": "tiny", "prompt": "' + b"x" * (17 * 2**20) + b'"}'
    r = httpx.post(f"{api}/api/reports", content=big, headers=json_headers, timeout=60)
    _error(r, 413, "too_large")
    r = httpx.post(f"{api}/api/reports", json={"model": "tiny", "prompt": 3}, headers=ana)
    error = _error(r, 422, "invalid_input")
    assert error["field"] is not None
    r = httpx.get(f"{api}/api/no-such-route")
    _error(r, 404, "not_found")
    r = httpx.delete(f"{api}/api/models")
    _error(r, 405, "method_not_allowed")


def test_ids_beyond_64_bits_and_invalid_text_are_refused_not_crashed(
    api: str, tiny_hub: Hub
) -> None:
    boss = bearer(tiny_hub, "ada", "admin")
    for path in ("/api/reports/{}", "/api/contributions/{}", "/api/jobs/{}", "/api/releases/{}"):
        r = httpx.get(api + path.format(2**64))
        _error(r, 422, "invalid_input")
    r = httpx.post(f"{api}/api/reports/{2**70}/confirm", headers=boss)
    _error(r, 422, "invalid_input")
    r = httpx.post(f"{api}/api/reports/1/close", json={"duplicate_of": 2**64}, headers=boss)
    _error(r, 422, "invalid_input")
    lone = '{"model": "tiny", "prompt": "bad \\ud800 text", "expected": {"type": "exact"}}'
    r = httpx.post(
        f"{api}/api/reports",
        content=lone.encode(),
        headers={**boss, "Content-Type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] in ("invalid_text", "invalid_input")
    with tiny_hub.session() as s:
        assert list_reports(s, ReportQuery()) == []  # nothing half stored


def test_only_the_configured_host_names_are_served(api: str) -> None:
    assert httpx.get(f"{api}/health").status_code == 200
    r = httpx.get(f"{api}/health", headers={"Host": "evil.example"})
    _error(r, 400, "bad_host")
    port = api.rsplit(":", 1)[1]
    assert httpx.get(f"{api}/health", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_writes_are_rate_limited_per_token_and_address(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    hub = Hub.open(tmp_path / "home", write_rate_per_minute=3)
    try:
        import_model(hub, str(tiny_model_dir), "tiny")
        ana = bearer(hub, "ana", "reporter")
        with serve(hub) as url:
            codes = [
                httpx.post(f"{url}/api/reports/1/confirm", headers=ana).status_code
                for _ in range(4)
            ]
            assert codes[:3] == [404, 404, 404]  # counted, whatever the answer
            assert codes[3] == 429
            r = httpx.post(f"{url}/api/reports/1/confirm")
            error = _error(r, 429, "rate_limited")  # the address is over its limit too
            assert "3 writes a minute" in error["message"]
            assert int(r.headers["Retry-After"]) >= 1
            assert httpx.get(f"{url}/api/reports").status_code == 200  # reads are not
    finally:
        hub.close()


def test_tracebacks_in_job_errors_are_for_admins_only(api: str, tiny_hub: Hub) -> None:
    job_id = tiny_hub.jobs.enqueue("evals.run", {"ref": "tiny", "suite": "nope"})
    with tiny_hub.session() as s, s.begin():
        from upstream.db.schema import Job

        row = s.get(Job, job_id)
        assert row is not None
        row.state = "failed"
        row.error = 'KeyError: "x"\nTraceback (most recent call last):\n  File "/srv/hub/x.py"'
    anyone = httpx.get(f"{api}/api/jobs/{job_id}").json()
    assert anyone["error"] == 'KeyError: "x"'
    maintainer = httpx.get(
        f"{api}/api/jobs/{job_id}", headers=bearer(tiny_hub, "mia", "maintainer")
    ).json()
    assert "/srv/hub" not in maintainer["error"]
    admin = httpx.get(f"{api}/api/jobs/{job_id}", headers=bearer(tiny_hub, "ada", "admin")).json()
    assert "/srv/hub/x.py" in admin["error"]
    listed = httpx.get(f"{api}/api/jobs").json()["jobs"]
    assert all("Traceback" not in j["error"] for j in listed)


def test_reports_without_consent_or_behind_held_out_cases_are_hidden(
    api: str, tiny_hub: Hub
) -> None:
    ana = person(tiny_hub, "ana", "reporter")

    def file(prompt: str, consent: bool = True) -> int:
        data = {"model": "tiny", "prompt": prompt, "expected": NEVER, "consent": consent}
        return submit_one(tiny_hub, parse_report(data), ana, "cli").filed[0].id

    private = file("my private prompt", consent=False)
    shared = file("a shared prompt")
    # a suite that holds out everything: the reports behind its cases are held out
    behind = [file(f"held prompt {i}") for i in range(3)]
    cases = [
        suites.CaseIn([{"role": "user", "content": f"held prompt {i}"}], NEVER, [], rid)
        for i, rid in enumerate(behind)
    ]
    suites.add_cases(tiny_hub, "secret", cases, "tiny", heldout_percent=90)
    with tiny_hub.session() as s:
        secret = suites.split_secret(s)
    held = [r for r in behind if suites.split_of(suites.split_key(r, ""), 90, secret) == "heldout"]
    assert held, "with 90 % held out, some of three reports are"

    viewers = {
        "anonymous": {},
        "another reporter": bearer(tiny_hub, "bob", "reporter"),
        "its reporter": bearer(tiny_hub, "ana", "reporter"),
        "a maintainer of tiny": bearer(tiny_hub, "tom", "maintainer", model="tiny"),
    }
    for who, headers in viewers.items():
        sees_all = who in ("its reporter", "a maintainer of tiny")
        listed = {
            r["id"] for r in httpx.get(f"{api}/api/reports", headers=headers).json()["reports"]
        }
        assert shared in listed, who
        for hidden in (private, *held):
            assert (hidden in listed) == sees_all, (who, hidden)
            r = httpx.get(f"{api}/api/reports/{hidden}", headers=headers)
            assert r.status_code == (200 if sees_all else 404), (who, hidden, r.text)
            if not sees_all:
                assert "prompt" not in r.text
        clustered = httpx.get(f"{api}/api/reports?clusters=true", headers=headers).text
        assert ("my private prompt" in clustered) == sees_all, who
    with tiny_hub.session() as s:  # the hub's own work still sees everything
        assert get_report(s, private).consent is False


def test_shard_names_in_a_safetensors_index_stay_in_the_model_folder(
    tiny_hub: Hub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from upstream.errors import InvalidInput

    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    outside = tmp_path / "outside.safetensors"
    weights = next(copy.glob("*.safetensors"))
    shutil.copy(weights, outside)
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "../outside.safetensors"}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(InvalidInput, match="not a file name in the model's folder"):
        import_model(tiny_hub, str(copy), "escape")


@pytest.mark.parametrize(
    ("name", "framework", "flag"),
    [("tf_model.h5", "TensorFlow", "from_tf"), ("flax_model.msgpack", "Flax", "from_flax")],
)
def test_tensorflow_and_flax_checkpoints_are_refused_by_name(
    tiny_hub: Hub, tiny_model_dir: Path, tmp_path: Path, name: str, framework: str, flag: str
) -> None:
    import shutil

    from upstream.errors import InvalidInput

    copy = tmp_path / "m"
    shutil.copytree(tiny_model_dir, copy)
    for w in copy.glob("*.safetensors"):
        w.unlink()
    (copy / name).write_bytes(b"\0" * 16)
    with pytest.raises(InvalidInput, match=f"only {framework} weights.*{flag}=True"):
        import_model(tiny_hub, str(copy), "foreign")


def test_an_adapter_must_be_an_adapter_folder_not_any_tree(tiny_hub: Hub, tmp_path: Path) -> None:
    from upstream import contributions as prs
    from upstream.errors import InvalidInput

    tree = tmp_path / "home-dir"
    (tree / "secrets").mkdir(parents=True)
    (tree / "secrets" / "id_rsa").write_text("private")
    (tree / "notes.txt").write_text("x")
    cory = person(tiny_hub, "cory", "contributor")
    data = prs.ContributionIn("tiny", "a fix", prs.Content(adapter_dir=tree))
    with pytest.raises(InvalidInput, match="unexpected file"):
        prs.open_contribution(tiny_hub, data, cory)
    work = tiny_hub.settings.work_dir
    assert not any(p.name == "id_rsa" for p in work.rglob("*")) if work.exists() else True


def test_a_tag_written_twice_at_once_is_no_server_error(api: str, tiny_hub: Hub) -> None:
    import concurrent.futures

    headers = bearer(tiny_hub, "mia", "maintainer")
    url = f"{api}/api/models/tiny/tags/candidate"

    def put(_: int) -> int:
        return httpx.put(url, json={"revision": "latest"}, headers=headers, timeout=30).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(put, range(16)))
    assert all(c < 500 for c in codes), codes
    assert 200 in codes
    assert owner(tiny_hub).name  # the hub still answers
    assert httpx.get(f"{api}/api/models/tiny").status_code == 200
