"""The real Triton HTTP client (`tritonclient[http]`) against a real gunicorn server's /v2."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as tritonclient_http
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")


# -- a gunicorn server over a demo store -------------------------------------------------------


def _cli(store: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "serving", "--store", str(store), *args],
        cwd=REPO,
        env=_env(store),
        capture_output=True,
        timeout=60,
        check=True,
    )


def _env(store: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SERVING_", "GUNICORN_")) and k not in ("HOST", "PORT")
    }
    env.update(
        HOST="127.0.0.1",
        PORT="0",
        WEB_CONCURRENCY="1",
        SERVING_STATSD_HOST="",
        SERVING_MODEL_STORE=str(store),
    )
    return env


class _Server:
    """`python -m gunicorn -c gunicorn.conf.py` on an ephemeral port; stdout read by a thread."""

    def __init__(self, store: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
            cwd=REPO,
            env=_env(store),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self._wait_for(self._listening, "the 'Listening at' log line")
        self._wait_for(self._ready, "GET /health/ready = 200")

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with contextlib.suppress(ValueError, OSError):
            for raw in iter(self.proc.stdout.readline, b""):
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _wait_for(self, probe: Any, what: str) -> Any:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"gunicorn exited with {self.proc.returncode}:\n" + self.output())
            found = probe()
            if found:
                return found
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what}:\n" + self.output())

    def _listening(self) -> int | None:
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                match = _LISTENING.search(str(json.loads(line).get("message", "")))
                if match:
                    return int(match.group(1))
        return None

    def _ready(self) -> bool:
        with contextlib.suppress(OSError):
            return _get_json(self.port, "/health/ready")[0] == 200
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def output(self) -> str:
        return "\n".join(self.lines[-40:])


def _get_json(port: int, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, iris_artifact_v2: Path) -> Iterator[_Server]:
    """iris v1 and diabetes v1 in production (`serving demo`), iris v2 stored but not deployed."""
    store = tmp_path_factory.mktemp("v2-triton") / "store"
    _cli(store, "demo")
    _cli(store, "models", "register", "iris", str(iris_artifact_v2))
    running = _Server(store)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def triton(server: _Server) -> Iterator[Any]:
    client = tritonclient_http.InferenceServerClient(server.url, network_timeout=10.0)
    try:
        yield client
    finally:
        client.close()


def _v1(server: _Server, name: str = "iris", rows: list[list[float]] = ROWS) -> dict:
    body = {"instances": rows, "return_proba": name == "iris"}
    return _get_json(server.port, f"/v1/models/{name}/predict", body)[1]


def _input(rows: Any, datatype: str, binary: bool) -> Any:
    array = np.asarray(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = tritonclient_http.InferInput("input-0", list(array.shape), datatype)
    return tensor.set_data_from_numpy(array, binary_data=binary)


def _labels(array: np.ndarray) -> list[str]:
    """BYTES outputs come back as bytes (binary) or str (JSON)."""
    return [v.decode() if isinstance(v, bytes) else v for v in array.tolist()]


# -- tests -------------------------------------------------------------------------------------


def test_server_health_and_metadata(triton: Any) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "serving" and "binary_tensor_data" in metadata["extensions"]


def test_model_readiness_and_metadata(triton: Any) -> None:
    assert triton.is_model_ready("iris")
    assert triton.is_model_ready("iris", "2")
    assert not triton.is_model_ready("nope")
    metadata = triton.get_model_metadata("iris")
    assert metadata["versions"] == ["1", "2"] and metadata["platform"] == "sklearn"
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba"]
    pinned = triton.get_model_metadata("diabetes", "1")
    assert pinned["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1]}]


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_infer_labels(
    server: _Server, triton: Any, datatype: str, binary_input: bool, binary_output: bool
) -> None:
    outputs = [tritonclient_http.InferRequestedOutput("predict", binary_data=binary_output)]
    result = triton.infer(
        "iris", [_input(ROWS, datatype, binary_input)], outputs=outputs, request_id="r1"
    )
    assert _labels(result.as_numpy("predict")) == _v1(server)["predictions"]
    response = result.get_response()
    assert response["id"] == "r1" and response["model_version"] == "1"


def test_infer_without_requested_outputs_returns_binary_predict(
    server: _Server, triton: Any
) -> None:
    result = triton.infer("iris", [_input(ROWS, "FP64", True)])
    assert result.get_output("predict")["parameters"]["binary_data_size"] > 0
    assert _labels(result.as_numpy("predict")) == _v1(server)["predictions"]


@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
def test_predict_proba_output(server: _Server, triton: Any, binary_output: bool) -> None:
    outputs = [
        tritonclient_http.InferRequestedOutput("predict_proba", binary_data=binary_output),
        tritonclient_http.InferRequestedOutput("predict", binary_data=binary_output),
    ]
    result = triton.infer("iris", [_input(ROWS, "FP64", True)], outputs=outputs)
    probabilities = result.as_numpy("predict_proba")
    assert probabilities.shape == (3, 3) and probabilities.dtype == np.float64
    assert np.allclose(probabilities, _v1(server)["probabilities"], atol=1e-6)


def test_regressor_predictions(server: _Server, triton: Any) -> None:
    rows = [[0.01 * i for i in range(10)], [0.0] * 10]
    result = triton.infer("diabetes", [_input(rows, "FP64", True)])
    predictions = result.as_numpy("predict")
    assert predictions.dtype == np.float64
    assert predictions.tolist() == pytest.approx(_v1(server, "diabetes", rows)["predictions"])


def test_pinned_and_unpinned_versions(triton: Any) -> None:
    tensor = _input(ROWS, "FP32", True)
    pinned = triton.infer("iris", [tensor], model_version="2")
    assert pinned.get_response()["model_version"] == "2"
    assert triton.infer("iris", [tensor]).get_response()["model_version"] == "1"


def test_repository_index(triton: Any) -> None:
    index = triton.get_model_repository_index()
    states = {(m["name"], m["version"]): m["state"] for m in index}
    assert states == {
        ("diabetes", "1"): "READY",
        ("iris", "1"): "READY",
        ("iris", "2"): "UNAVAILABLE",
    }


def test_unknown_model_raises_a_readable_exception(triton: Any) -> None:
    with pytest.raises(InferenceServerException) as raised:
        triton.infer("nope", [_input(ROWS, "FP64", True)])
    assert raised.value.status() == "404"
    assert "model 'nope' is not deployed" in raised.value.message()


@pytest.mark.parametrize(
    ("model", "rows", "outputs", "text"),
    [
        ("iris", [[1.0, 2.0, 3.0]], [], "expected shape [N, 4]"),
        ("diabetes", [[0.0] * 10], ["predict_proba"], "no output 'predict_proba'"),
    ],
    ids=["wrong-shape", "proba-of-a-regressor"],
)
def test_bad_requests_raise_readable_exceptions(
    triton: Any, model: str, rows: list, outputs: list[str], text: str
) -> None:
    requested = [tritonclient_http.InferRequestedOutput(name) for name in outputs]
    with pytest.raises(InferenceServerException) as raised:
        triton.infer(model, [_input(rows, "FP64", True)], outputs=requested or None)
    assert raised.value.status() == "400"
    assert text in raised.value.message()
