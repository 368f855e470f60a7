"""End-to-end: the dashboard of a real 2-worker gunicorn, opened in headless Chromium.

Real traffic (successes, 422s, refused requests for an unknown model, a promote to a second
version of iris) goes through both workers; once they flushed, Chromium loads `/dashboard`, runs
its script against `/v1/dashboard/data`, and the DOM after that must show charts drawn from that
traffic. A screenshot is saved to test-artifacts/dashboard.png (git-ignored).

Chromium is Debian's `chromium` (installed by `make test`, target `browser`); without it the
browser part skips and says why.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression

from tests.e2e.conftest import (
    IRIS_ROW,
    REPO,
    GunicornServer,
    http_request,
    predict,
    run_cli,
    server_env,
    statsd_listener,
    wait_for_workers,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ARTIFACTS = REPO / "test-artifacts"
BROWSER_TIMEOUT = 90.0
# A feature name that would become an element if the page rendered names as HTML.
HOSTILE = '<b id="pwned">bold</b>'
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=8000",
)


class _Elements(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str | None = None, **wanted: str) -> list[dict[str, str]]:
        """Attributes of the elements (of `tag`) whose attributes have these values."""
        keys = {k.replace("_", "-"): v for k, v in wanted.items()}
        return [
            a
            for t, a in self.tags
            if tag in (None, t) and all(a.get(k) == v for k, v in keys.items())
        ]


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary is not None
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        check=False,
    )


def _hostile_model(tmp_path: Path) -> tuple[Path, Path]:
    """A classifier whose first feature name is HTML, and its reference CSV."""
    frame = pd.DataFrame({HOSTILE: [0.0, 1.0, 2.0, 3.0] * 25, "plain": [1.0, 0.0] * 50})
    target = (frame[HOSTILE] > 1.5).map({True: "big", False: "small"})
    artifact, reference = tmp_path / "hostile.joblib", tmp_path / "hostile.csv"
    joblib.dump(LogisticRegression().fit(frame, target), artifact)
    frame.to_csv(reference, index=False)
    return artifact, reference


def _dashboard(port: int) -> dict[str, Any]:
    reply = http_request(port, "GET", "/v1/dashboard/data?window=15m")
    assert reply.status == 200, reply.raw
    return reply.body  # type: ignore[no-any-return]


def test_dashboard_shows_real_traffic_in_chromium(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    tmp_path: Path,
) -> None:
    store = copy_store()
    artifact, reference = _hostile_model(tmp_path)
    run_cli(store, "models", "register", "odd", str(artifact), "--reference-data", str(reference))
    run_cli(store, "models", "promote", "odd", "1")
    diabetes = load_diabetes().data.tolist()
    with statsd_listener() as statsd:
        extra = {"SERVING_MONITOR_FLUSH": "0.2"}
        server = start_server(server_env(store, statsd.port, workers=2, extra=extra))
        port = server.port
        workers = wait_for_workers(port, 2)
        sent = {"iris_v1": 0, "iris_v2": 0, "diabetes": 0, "odd": 0, "422": 0, "404": 0}
        for i in range(60):
            assert predict(port, [IRIS_ROW]).status == 200
            assert predict(port, [diabetes[i]], name="diabetes").status == 200
            assert predict(port, [[float(i % 4), 1.0]], name="odd").status == 200
        sent.update(iris_v1=60, diabetes=60, odd=60)
        for _ in range(8):
            assert predict(port, [[1.0, 2.0]]).status == 422  # wrong feature count, on iris v1
            assert predict(port, [IRIS_ROW], name="nope").status == 404  # no model chosen
        sent.update({"422": 8, "404": 8})

        run_cli(store, "models", "promote", "iris", "2")

        def on_v2() -> bool:  # every worker (survey both) serves v2; these requests count too
            versions = set()
            for _ in range(6):
                reply = predict(port, [IRIS_ROW])
                assert reply.status == 200
                sent["iris_v1" if reply.headers["x-model-version"] == "1" else "iris_v2"] += 1
                versions.add(reply.headers["x-model-version"])
            return versions == {"2"}

        wait_until(on_v2, 15, "every worker to serve iris v2", step=0.1)
        for _ in range(40):
            assert predict(port, [IRIS_ROW]).status == 200
        sent["iris_v2"] += 40
        total = sum(sent.values())
        assert server.served_by("iris", workers) == workers  # the counts are over two workers

        # -- the JSON, once every worker flushed ------------------------------------------
        wait_until(
            lambda: _dashboard(port)["totals"]["requests"] == total, 15, "both workers' counts"
        )
        data = _dashboard(port)
        assert data["totals"]["client_errors"] == 16 and data["totals"]["unrouted"] == 8
        iris = next(m for m in data["models"] if m["name"] == "iris")
        by_version = {row["version"]: row["requests"] for row in iris["traffic"]}
        assert by_version == {1: sent["iris_v1"] + 8, 2: sent["iris_v2"]}
        assert iris["drift"]["status"] == "no_reference"  # v2 was registered without CSV
        assert any(s["model"] == "iris" and s["version"] == 2 for s in data["swaps"])

        # -- the page in Chromium ---------------------------------------------------------
        if shutil.which("chromium") is None:
            pytest.skip(
                "chromium is not installed (`make test` installs Debian's package, target "
                "`browser`; it could not here): the dashboard's JSON was checked, its page not"
            )
        url = f"http://127.0.0.1:{port}/dashboard"
        dom = _chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        page = _Elements()
        page.feed(dom.stdout)
        assert any("data-rendered" in a for _, a in page.tags), dom.stdout[:2000]

        (throughput,) = page.find(data_chart="throughput")
        assert int(throughput["data-nonzero"]) > 0
        assert int(throughput["data-series"]) >= 5  # all + iris v1, iris v2, diabetes, odd
        (latency,) = page.find(data_chart="latency")
        assert int(latency["data-points"]) > 0
        (errors,) = page.find(data_chart="errors")
        assert int(errors["data-nonzero"]) > 0  # the 422s and 404s
        (bars,) = page.find(data_chart="versions", data_model="iris")
        assert int(bars["data-points"]) == 2
        drawn = {
            a["data-version"]: int(a["data-requests"]) for a in page.find("g", data_model="iris")
        }
        assert drawn["1"] == sent["iris_v1"] + 8 and drawn["2"] == sent["iris_v2"]
        swaps = page.find(data_swap="promote", data_model="iris", data_version="2")
        assert len(swaps) == 1
        drift_rows = {a["data-feature"] for t, a in page.tags if t == "tr" and "data-feature" in a}
        assert drift_rows == {*load_diabetes().feature_names, HOSTILE, "plain"}
        histograms = [a for a in page.find(data_chart="histogram") if int(a["data-live"]) > 0]
        assert len(histograms) >= 3  # the worst features of diabetes and odd, with live data
        assert page.find(data_note="no_reference")  # iris v2 says it cannot compute drift
        # names are text, never markup: the hostile feature name is shown, not parsed
        assert page.find(id="pwned") == []
        assert any(HOSTILE in text for text in page.text)
        assert not re.search(r"https?://(?!127\.0\.0\.1|www\.w3\.org/2000/svg)", dom.stdout)

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "dashboard.png"
        shot.unlink(missing_ok=True)
        result = _chromium(
            f"--screenshot={shot}", "--window-size=1400,1800", url, profile=tmp_path / "profile"
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert shot.stat().st_size > 20_000  # a page of charts, not a blank one
        assert server.stop() == 0
