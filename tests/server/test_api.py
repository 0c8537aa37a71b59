"""The hub's HTTP interface, over real HTTP on loopback."""

import dataclasses
from pathlib import Path

import httpx
import pytest

from tests.people import bearer, owner_bearer
from tests.server.conftest import wait_job
from upstream.hub import Hub


def allow_imports_from(hub: Hub, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `import_dirs` setting of the running server's hub, set to `folder`."""
    monkeypatch.setattr(hub, "settings", dataclasses.replace(hub.settings, import_dirs=str(folder)))


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


def test_errors_are_json_4xx(
    server: str, tiny_hub: Hub, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = httpx.get(f"{server}/api/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert "unknown model 'nope'" in r.json()["error"]["message"]
    r = httpx.get(f"{server}/api/models/tiny/revisions/zz")
    assert r.status_code == 404 and "no such tag" in r.json()["error"]["message"]
    admin = owner_bearer(tiny_hub)
    allow_imports_from(tiny_hub, tiny_model_dir, monkeypatch)
    missing = {"source": str(tiny_model_dir / "no-such-dir"), "name": "x"}
    r = httpx.post(f"{server}/api/models/import", json=missing, headers=admin)
    assert r.status_code == 404 and "no such file" in r.json()["error"]["message"]
    r = httpx.post(
        f"{server}/api/models/import", json={"source": "bundled:x", "name": "Bad!"}, headers=admin
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert "model name" in r.json()["error"]["message"]
    as_json = {**admin, "Content-Type": "application/json"}
    r = httpx.post(f"{server}/api/models/import", content=b"{oops", headers=as_json)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"


def test_imports_over_the_api_are_an_admin_s_from_allowed_folders(
    server: str, tiny_hub: Hub, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"source": str(tiny_model_dir), "name": "tiny-copy"}
    r = httpx.post(f"{server}/api/models/import", json=body)  # anonymous
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    maintainer = bearer(tiny_hub, "mae", "maintainer")
    r = httpx.post(f"{server}/api/models/import", json=body, headers=maintainer)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = httpx.post(f"{server}/api/models/import", json=body, headers=owner_bearer(tiny_hub))
    assert r.status_code == 403 and "bundled:NAME only" in r.json()["error"]["message"]
    allow_imports_from(tiny_hub, tiny_model_dir.parent / "elsewhere", monkeypatch)
    r = httpx.post(f"{server}/api/models/import", json=body, headers=owner_bearer(tiny_hub))
    assert r.status_code == 403 and "import_dirs" in r.json()["error"]["message"]
    r = httpx.post(
        f"{server}/api/models/import", json=body, headers={"X-Upstream-User": "root"}
    )  # the old header names nobody
    assert r.status_code == 401


def test_import_through_the_api_runs_on_the_in_process_worker(
    server: str, tiny_hub: Hub, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allow_imports_from(tiny_hub, tiny_model_dir, monkeypatch)
    r = httpx.post(
        f"{server}/api/models/import",
        json={"source": str(tiny_model_dir), "name": "tiny-copy"},
        headers=owner_bearer(tiny_hub),
    )
    assert r.status_code == 202
    job_id = r.json()["job"]
    job = wait_job(server, job_id)
    assert job["state"] == "done", job["error"]
    names = [m["name"] for m in httpx.get(f"{server}/api/models").json()["models"]]
    assert names == ["tiny", "tiny-copy"]


def test_tags_through_the_api(server: str, tiny_hub: Hub) -> None:
    latest = httpx.get(f"{server}/api/models").json()["models"][0]["latest"]
    url = f"{server}/api/models/tiny/tags/stable"
    assert httpx.put(url, json={"revision": latest[:8]}).status_code == 401  # anonymous
    contributor = bearer(tiny_hub, "bo")
    r = httpx.put(url, json={"revision": latest[:8]}, headers=contributor)
    assert r.status_code == 403 and "maintainer of tiny" in r.json()["error"]["message"]
    maintainer = bearer(tiny_hub, "mae", "maintainer", model="tiny")
    r = httpx.put(url, json={"revision": latest[:8]}, headers=maintainer)
    assert r.status_code == 200 and r.json()["revision"] == latest
    assert httpx.get(f"{server}/api/models/tiny/revisions/stable").json()["revision"] == latest
    assert httpx.delete(url).status_code == 401
    assert httpx.delete(url, headers=contributor).status_code == 403
    assert httpx.delete(url, headers=maintainer).status_code == 204
    latest_tag = f"{server}/api/models/tiny/tags/latest"
    assert httpx.delete(latest_tag, headers=maintainer).status_code == 422


def test_the_page_lists_models_and_revisions(server: str) -> None:
    listing = httpx.get(f"{server}/models")
    assert listing.status_code == 200 and listing.headers["content-type"].startswith("text/html")
    assert "tiny" in listing.text and "LlamaForCausalLM" in listing.text
    page = httpx.get(f"{server}/models/tiny")
    latest = httpx.get(f"{server}/api/models").json()["models"][0]["latest"]
    assert latest[:12] in page.text and "LlamaForCausalLM" in page.text
    assert "http://" not in page.text.replace(server, "")  # nothing fetched from elsewhere
