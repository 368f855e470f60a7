"""A bundle's index.html in headless Chromium: scores a row typed into its form, and rows pasted
into its text box, with onnxruntime-web in the page, and shows what the server answers; a changed
model.onnx is refused. The bundle is served by a static file server on loopback (this test's); a
screenshot is kept in test-artifacts/edge-page.png (git-ignored, like the dashboard's).

Needs Chromium (`make browser`) and onnxruntime-web (`make edge-web`); `make test` installs
both; where one is missing the test skips and says which.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.edge.bundle import DEFAULT_WEB_DIR, check_web_runtime
from serving.errors import StoreError
from serving.store.model_store import ModelStore
from tests.edge.chromium import Chromium
from tests.edge.conftest import REPO, export, rows

pytestmark = pytest.mark.slow
ARTIFACTS = REPO / "test-artifacts"
STATUS = "document.getElementById('status')"
STATE = f"{STATUS}?.dataset.state"
NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


class _Files(http.server.SimpleHTTPRequestHandler):
    """Static files, each request's path remembered instead of logged."""

    def log_message(self, format: str, *args: Any) -> None:
        self.server.requested.append(self.path)  # type: ignore[attr-defined]


@pytest.fixture
def static_server() -> Iterator[Callable[[Path], tuple[str, list[str]]]]:
    """serve(DIR): a static file server of DIR on loopback; (its URL, the paths requested)."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def serve(directory: Path) -> tuple[str, list[str]]:
        handler = functools.partial(_Files, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.requested = []  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", server.requested  # type: ignore[attr-defined]

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (`make browser` installs Debian's package)")
    try:
        check_web_runtime(DEFAULT_WEB_DIR)
    except StoreError as exc:
        pytest.skip(f"the edge page needs onnxruntime-web: {exc}")
    chromium = Chromium(tmp_path / "profile")
    yield chromium
    chromium.close()


def _scored(browser: Chromium, count: int) -> list[dict[str, str]]:
    browser.wait_for(f"document.body.dataset.scored === '{count}'", 30)
    return browser.evaluate(  # type: ignore[no-any-return]
        "Array.from(document.querySelectorAll('#scored tbody tr'), tr => ({...tr.dataset}))"
    )


def test_the_page_scores_a_typed_row_and_pasted_rows_like_the_server(
    edge_store: ModelStore,
    server_answer: Callable[..., dict[str, Any]],
    static_server: Callable[[Path], tuple[str, list[str]]],
    browser: Chromium,
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "iris-bundle"
    assert export(edge_store, "iris", 1, bundle) == 0
    url, requested = static_server(bundle)
    browser.call("Page.navigate", url=url + "index.html")
    state = browser.wait_for(f"['ready', 'refused', 'error'].includes({STATE}) && {STATE}", 60)
    assert state == "ready", browser.evaluate(f"{STATUS}.textContent")

    typed = [6.1, 2.8, 4.7, 1.2]
    for j, value in enumerate(typed):
        browser.type_into(f"#f{j}", str(value))
    browser.click("#score-one")
    (shown,) = _scored(browser, 1)
    server = server_answer("iris", [typed], proba=True)
    assert shown["prediction"] == server["predictions"][0]
    shown_proba = json.loads(shown["proba"])
    assert np.abs(np.asarray(shown_proba) - server["probabilities"][0]).max() <= 1e-5

    pasted = rows("iris", 5, seed=3)
    csv = ",".join(NAMES) + "\n" + "\n".join(",".join(map(str, row)) for row in pasted)
    browser.type_into("#rows", csv + "\n5.0,oops,1.4,0.2")
    browser.click("#score-many")
    shown_rows = _scored(browser, 2)
    server = server_answer("iris", pasted, proba=True)
    assert [r.get("prediction") for r in shown_rows[:5]] == server["predictions"]
    got = np.asarray([json.loads(r["proba"]) for r in shown_rows[:5]])
    assert np.abs(got - np.asarray(server["probabilities"])).max() <= 1e-5
    refused = server_answer("iris", [dict(zip(NAMES, [5.0, "oops", 1.4, 0.2]))])
    assert shown_rows[5]["error"] == refused["error"]["message"].replace("instance 0", "instance 5")

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "edge-page.png"
    shot.unlink(missing_ok=True)
    browser.screenshot(shot)
    assert shot.stat().st_size > 10_000
    files = {"/" + name for name in json.loads((bundle / "manifest.json").read_text())["files"]}
    assert {path.split("#")[0] for path in requested} <= files | {"/manifest.json"}


def test_the_page_refuses_a_changed_model(
    edge_store: ModelStore,
    static_server: Callable[[Path], tuple[str, list[str]]],
    browser: Chromium,
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "iris-bundle"
    assert export(edge_store, "iris", 1, bundle) == 0
    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    browser.call("Page.navigate", url=static_server(bundle)[0] + "index.html")
    browser.wait_for(f"['ready', 'refused', 'error'].includes({STATE})", 60)
    assert browser.evaluate(STATE) == "refused"
    assert browser.evaluate(f"{STATUS}.textContent").startswith("model.onnx: sha256 differs")
    assert browser.evaluate("document.querySelectorAll('#fields input').length") == 0
