"""A real browser (Debian's Chromium, headless) loads `/` and draws the chart.

Chromium comes from scripts/test-deps.sh (apt); the test fails loudly if it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

import pytest
import uvicorn
from _serve_data import make_root

from hafen.serve import create_app
from hafen.testing import free_port, poll_for

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("chromium is not installed: run `bash scripts/test-deps.sh` (as root)")


@pytest.fixture
def server(tmp_path):
    root = make_root(tmp_path / "datasets")
    port = free_port()
    config = uvicorn.Config(create_app(str(root)), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    poll_for(lambda: server.started, 30, period=0.05, what="uvicorn started")
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


def _run_chromium(args: list[str], profile) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_page_draws_history_and_forecast(server, tmp_path):
    done = _run_chromium(
        ["--virtual-time-budget=15000", "--dump-dom", server], tmp_path / "profile"
    )
    dom = done.stdout
    assert 'data-ready="1"' in dom, done.stderr[-2000:]
    assert 'data-forecast-points="28"' in dom
    assert 'data-history-points="60"' in dom
    polylines = dict(re.findall(r'<polyline class="(\w+)" points="([^"]+)"', dom))
    assert len(polylines["forecast"].split()) == 28
    assert len(polylines["history"].split()) == 60
    assert "60 days of history, 28 days of forecast" in dom

    screenshot = tmp_path / "chart.png"
    shot = _run_chromium(
        [
            "--virtual-time-budget=15000",
            "--window-size=1000,560",
            f"--screenshot={screenshot}",
            server,
        ],
        tmp_path / "profile2",
    )
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    kept = os.environ.get("CHART_SCREENSHOT")
    if kept:  # for a person to look at
        shutil.copy(screenshot, kept)


@pytest.mark.slow
def test_tenant_page_runs_under_its_content_security_policy(tmp_path):
    """The service's page (public, with a CSP allowing its inline script and this origin only)
    runs in a real browser: without a key, its request is refused and it says so."""
    from hafen.serve import create_service

    app = create_service(tmp_path / "home")
    app.tenants.add("acme")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        poll_for(lambda: server.started, 30, period=0.05, what="uvicorn started")
        done = _run_chromium(
            ["--virtual-time-budget=15000", "--dump-dom", f"http://127.0.0.1:{port}/"],
            tmp_path / "profile",
        )
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert "error: a valid API key is needed" in done.stdout, done.stderr[-2000:]
