"""An output stopped at its verdict, generated whole from a page: the rest follows the
prefix exactly (greedy), replaces it in the cache, and only those who may run
evaluations may ask."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from tests.people import owner
from tests.server.conftest import serve
from tests.web.conftest import token
from upstream import evals, suites
from upstream.db.schema import EvalOutput
from upstream.hub import Hub

NEVER = {"type": "exact", "value": "a sentence this model will not say"}


def test_a_stopped_output_is_generated_whole_on_demand(tiny_hub: Hub) -> None:
    case = suites.CaseIn([{"role": "user", "content": "Tell me about the sea."}], NEVER, [])
    suites.import_cases(tiny_hub, owner(tiny_hub), "w", [case], model="tiny", heldout_percent=0)
    run = evals.run_eval(tiny_hub, "tiny", "w", max_new_tokens=24)["run"]
    case_id = suites.case_id(case.messages, case.expected)
    with tiny_hub.session() as s:
        [prefix] = s.scalars(select(EvalOutput)).all()
    assert prefix.stopped and prefix.completion_tokens < 24  # decided at once: it stopped
    url = f"/evals/{run}/cases/{case_id}/full"
    with serve(tiny_hub) as base:
        page = httpx.get(f"{base}/evals/{run}", headers=_bearer(tiny_hub, "bo", "contributor"))
        assert "Whole answer</button>" in page.text and f'action="{url}"' in page.text
        reporter = httpx.post(f"{base}{url}", headers=_bearer(tiny_hub, "ana", "reporter"))
        assert reporter.status_code == 403
        assert "Whole answer</button>" not in httpx.get(f"{base}/evals/{run}").text  # not offered
        done = httpx.post(
            f"{base}{url}",
            data={"next": f"/evals/{run}"},
            headers=_bearer(tiny_hub, "bo", "contributor"),
        )
        assert done.status_code == 303 and done.headers["location"] == f"/evals/{run}"
        with tiny_hub.session() as s:
            [whole] = s.scalars(select(EvalOutput)).all()
        assert not whole.stopped and whole.completion_tokens > prefix.completion_tokens
        assert whole.output.startswith(prefix.output)  # the same greedy answer, continued
        shown = httpx.get(f"{base}/evals/{run}").text
        assert "Whole answer</button>" not in shown
        wrong = httpx.post(
            f"{base}/evals/{run}/cases/{'0' * 64}/full",
            headers=_bearer(tiny_hub, "bo", "contributor"),
        )
        assert wrong.status_code == 404


def _bearer(hub: Hub, name: str, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(hub, name, role)}"}
