"""Photograph every page of a hub for docs/web.md.

    .venv/bin/upstream demo --home /tmp/demohub      # a hub with the whole loop in it
    .venv/bin/python scripts/screenshots.py --home /tmp/demohub --out docs/web

Serves the hub on a loopback port, signs in as its owner with a new token (revoked at
the end), and saves each page at 1200 px wide and the tracker and a report at 375 px.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from upstream import accounts
from upstream.hub import Hub
from upstream.server.app import create_app

PAGES = {
    "dashboard": "/",
    "models": "/models",
    "model": "/models/smollm2-135m-instruct",
    "reports": "/reports",
    "report": "/reports/15",
    "suites": "/suites",
    "suite": "/suites/one-word",
    "evals": "/evals",
    "eval": "/evals/1",
    "contributions": "/contributions",
    "contribution": "/contributions/1",
    "releases": "/releases",
    "release": "/releases/1",
    "leaderboard": "/leaderboard",
    "feedback": "/feedback",
    "compare": "/compare/7",
    "job": "/jobs/7",
}
PHONE = {"reports-phone": "/reports", "report-phone": "/reports/15"}
# (file-a-report.png is the form after Preview on a fresh hub, taken by hand: docs/web.md)
# (job 7 of the demo hub: a comparison of the imported revision with v2 on one-word,
# queued after the demo with `comparisons.queue_compare` and run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("docs/web"))
    args = parser.parse_args()
    hub = Hub.open(args.home)
    boss = accounts.owner(hub)
    made = accounts.create_token(hub, boss, boss.name, expires=timedelta(days=1), note="pictures")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(hub), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"), args=["--no-sandbox"]
            )
            for size, pages in [((1200, 900), PAGES), ((375, 812), PHONE)]:
                context = browser.new_context(viewport={"width": size[0], "height": size[1]})
                page = context.new_page()
                page.goto(f"{base}/sign-in")
                if size[0] > 400:
                    page.screenshot(path=str(args.out / "sign-in.png"))
                page.get_by_label("API token").fill(made["token"])
                page.get_by_role("button", name="Sign in").click()
                page.wait_for_url(f"{base}/")
                for name, url in pages.items():
                    page.goto(f"{base}{url}")
                    page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
                    print(f"{name}.png  {url}")
                context.close()
            browser.close()
    finally:
        server.should_exit = True
        accounts.revoke_token(hub, boss, made["id"])


if __name__ == "__main__":
    main()
