"""The UI plugin in a real browser: headless Chromium (Debian's `chromium`) against a running `airflow api-server`.

Runs of the bundled sample (two released, the second with one more source, and one still running) are shown
through the API server as a logged-in user would see them; the pages are checked for real numbers and kept as
PNG screenshots (in $INFINSTRUCT_SCREENSHOTS when set, e.g. docs/, else the test's temporary folder). Without
Airflow's login the browser gets 401 and no data. Skipped where /usr/bin/chromium is absent.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import publish, run_dedup_steps, run_partition_steps, sample_recipe
from infinstruct import pipeline

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium):"
    " `apt-get install -y chromium` to run the headless-browser check of the UI plugin",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"gave up waiting for {what}")


@pytest.fixture(scope="module")
def sample_runs(engine, tmp_path_factory):
    """Two released runs of the sample (the first without its `support` source) and a third still running."""
    folder = tmp_path_factory.mktemp("ui")
    recipe = sample_recipe("sample-ui")
    sources = recipe["sources"]
    runs = []
    for chosen in ([s for s in sources if s["name"] != "support"], sources):
        path = folder / "sample-ui.yaml"
        path.write_text(yaml.safe_dump({**recipe, "sources": chosen}))
        run_id = run_dedup_steps(path)
        pipeline.check_ingested(run_id)
        pipeline.select(run_id)
        publish(run_id, folder / "releases")
        runs.append(run_id)
    return {"first": runs[0], "second": runs[1], "running": run_partition_steps(path)}


@pytest.fixture(scope="module")
def api_server(airflow_home, tmp_path_factory):
    """`airflow api-server` on a free loopback port with the project's plugins, one known admin password; its
    base URL and a JWT for that user."""
    folder = tmp_path_factory.mktemp("api-server")
    password = secrets.token_urlsafe(12)
    (folder / "passwords.json").write_text(json.dumps({"admin": password}))
    port = _free_port()
    env = {
        **os.environ,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(folder / "passwords.json"),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    log = (folder / "api-server.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("airflow")),
            "api-server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=5).status == 200, "the API server"
        )
        request = urllib.request.Request(
            f"{base}/auth/token",
            json.dumps({"username": "admin", "password": password}).encode(),
            {"Content-Type": "application/json"},
        )
        token = json.load(urllib.request.urlopen(request, timeout=30))["access_token"]
        yield base, token
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
        log.close()


class Browser:
    """Headless Chromium driven over the DevTools protocol (one page)."""

    def __init__(self, profile: Path):
        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port = _wait(lambda: (profile / "DevToolsActivePort").read_text().split()[0], "Chromium's DevTools port", 60)
        pages = _wait(
            lambda: [
                t
                for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
                if t["type"] == "page"
            ],
            "a Chromium page",
            60,
        )
        from websockets.sync.client import connect

        self.ws, self.next_id = connect(pages[0]["webSocketDebuggerUrl"], max_size=None), 0

    def __call__(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'") -> str:
        """Load `url`, wait until the JavaScript `ready` holds; returns the page's text."""
        self("Page.navigate", url=url)
        _wait(lambda: self.evaluate(ready), f"{url} to be ready", 60)
        return self.evaluate("document.body.innerText")

    def screenshot(self, path: Path, width: int = 1280) -> None:
        """The whole page as PNG."""
        height = int(self("Page.getLayoutMetrics")["cssContentSize"]["height"])
        self(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=max(height, 600),
            deviceScaleFactor=1,
            mobile=False,
        )
        path.write_bytes(base64.b64decode(self("Page.captureScreenshot", format="png")["data"]))
        self("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        self.ws.close()
        os.killpg(self.process.pid, 15)
        self.process.wait(30)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "chromium-profile")
    yield b
    b.close()


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("INFINSTRUCT_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_anonymous_browser_gets_401_and_no_data(sample_runs, api_server, browser):
    base, _ = api_server
    for path in ("/infinstruct/", f"/infinstruct/run/{sample_runs['second']}", "/infinstruct/explain?ref=x"):
        text = browser.open(base + path)
        assert "Not authenticated" in text and sample_runs["second"] not in text and "sample-ui" not in text


def test_pages_in_the_browser(sample_runs, api_server, browser, tmp_path, engine):
    base, token = api_server
    shots = _shots(tmp_path)
    browser("Network.enable")
    browser("Network.setCookie", name="_token", value=token, url=base + "/")

    text = browser.open(f"{base}/infinstruct/?dataset=sample-ui")
    assert "Funnel of the last 3 runs" in text and sample_runs["running"] in text
    assert browser.evaluate("document.querySelectorAll('svg rect').length") > 10
    browser.screenshot(shots / "ui-runs.png")

    text = browser.open(f"{base}/infinstruct/run/{sample_runs['second']}")
    assert "Funnel as the run saw it" in text and "Release v0002" in text and "Against v0001" in text
    assert "exact_duplicate" in text and "quarantine:" in text
    browser.screenshot(shots / "ui-run.png")

    text = browser.open(f"{base}/infinstruct/run/{sample_runs['running']}")
    assert "pending" in text and "no kept count yet" in text
    browser.screenshot(shots / "ui-run-running.png")

    import sqlalchemy as sa

    with engine.connect() as conn:  # a record the exact dedup dropped: its lineage names what it duplicates
        duplicate = conn.execute(
            sa.text(
                "select r.record_id from decisions d join records r using (partition_id, line_no) join run_partitions rp"
                " on rp.partition_id = d.partition_id and rp.run_id = :r where d.reason = 'exact_duplicate'"
                " order by r.record_id limit 1"
            ),
            {"r": sample_runs["second"]},
        ).scalar_one()
    text = browser.open(f"{base}/infinstruct/explain?ref={duplicate}")
    assert "exact_duplicate" in text and "v0002" in text
    browser.screenshot(shots / "ui-lineage.png")

    # inside Airflow's own UI: Browse -> "infinstruct runs" shows the page in a frame
    frame = "document.querySelector('iframe')?.contentDocument?.body?.innerText?.includes('Funnel of the last')"
    browser.open(f"{base}/plugin/infinstruct_runs", ready=frame)
    browser.screenshot(shots / "ui-airflow.png", width=1440)
    for name in ("ui-runs", "ui-run", "ui-run-running", "ui-lineage", "ui-airflow"):
        assert (shots / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
