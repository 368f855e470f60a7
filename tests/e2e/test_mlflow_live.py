"""An MLflow-style client against a real gunicorn server's /invocations."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import GunicornServer, server_env

pytestmark = pytest.mark.e2e

NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
LABELS = ["setosa", "virginica"]


def test_mlflow_style_client_against_real_gunicorn(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer]
) -> None:
    extra = {"SERVING_STATSD_HOST": "", "SERVING_DEFAULT_MODEL": "iris"}
    server = start_server(server_env(copy_store(), statsd_port=9, workers=1, extra=extra))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/ping", timeout=10) as response:
        assert response.status == 200
    frame = pd.DataFrame(ROWS, columns=NAMES)
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/invocations",
        data=json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split"))}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["predictions"] == LABELS
