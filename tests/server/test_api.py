"""The hub's HTTP interface, over real HTTP on loopback."""

from pathlib import Path

import httpx

from tests.server.conftest import wait_job


def test_health_and_models(server: str) -> None:
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    models = httpx.get(f"{server}/api/models").json()["models"]
    assert [m["name"] for m in models] == ["tiny"]
    assert models[0]["architecture"] == "LlamaForCausalLM"
    detail = httpx.get(f"{server}/api/models/tiny").json()
    rev = detail["revision_list"][0]
    assert rev["tags"] == ["latest"] and rev["revision"] == models[0]["latest"]
    by_prefix = httpx.get(f"{server}/api/models/tiny/revisions/{rev['revision'][:8]}").json()
    assert by_prefix["revision"] == rev["revision"]


def test_errors_are_json_4xx(server: str) -> None:
    r = httpx.get(f"{server}/api/models/nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = httpx.get(f"{server}/api/models/tiny/revisions/zz")
    assert r.status_code == 404 and "no such tag" in r.json()["error"]
    r = httpx.post(f"{server}/api/models/import", json={"source": "/no/such/dir", "name": "x"})
    assert r.status_code == 404 and "no such file" in r.json()["error"]
    r = httpx.post(f"{server}/api/models/import", json={"source": "bundled:x", "name": "Bad!"})
    assert r.status_code == 422 and "model name" in r.json()["error"]


def test_import_through_the_api_runs_on_the_in_process_worker(
    server: str, tiny_model_dir: Path
) -> None:
    r = httpx.post(
        f"{server}/api/models/import", json={"source": str(tiny_model_dir), "name": "tiny-copy"}
    )
    assert r.status_code == 202
    job_id = r.json()["job"]
    job = wait_job(server, job_id)
    assert job["state"] == "done", job["error"]
    names = [m["name"] for m in httpx.get(f"{server}/api/models").json()["models"]]
    assert names == ["tiny", "tiny-copy"]


def test_tags_through_the_api(server: str) -> None:
    latest = httpx.get(f"{server}/api/models").json()["models"][0]["latest"]
    r = httpx.put(f"{server}/api/models/tiny/tags/stable", json={"revision": latest[:8]})
    assert r.status_code == 200 and r.json()["revision"] == latest
    assert httpx.get(f"{server}/api/models/tiny/revisions/stable").json()["revision"] == latest
    assert httpx.delete(f"{server}/api/models/tiny/tags/stable").status_code == 204
    assert httpx.delete(f"{server}/api/models/tiny/tags/latest").status_code == 422


def test_the_page_lists_models_and_revisions(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    latest = httpx.get(f"{server}/api/models").json()["models"][0]["latest"]
    assert "tiny" in page.text and latest[:12] in page.text and "LlamaForCausalLM" in page.text
    assert "http://" not in page.text.replace(server, "")  # nothing fetched from elsewhere
