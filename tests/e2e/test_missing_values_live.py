"""A HistGradientBoostingClassifier fitted with NaN, registered by the CLI, behind real gunicorn:
JSON null on /v1 and /v2 is answered as the model's own predict answers NaN."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from tests.e2e.conftest import GunicornServer, http_request, predict, run_cli, server_env

pytestmark = pytest.mark.e2e

NAMES = ["a", "b"]
ROWS = [[None, 0.5], [1.0, None], [-0.3, 0.2]]


def test_hgb_answers_null_like_its_own_predict_on_nan(
    tmp_path: Path, start_server: Callable[..., GunicornServer]
) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 2)), columns=NAMES)
    target = (frame["a"] > frame["b"]).astype(int)
    frame.loc[rng.random(200) < 0.2, "a"] = np.nan
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(frame, target)
    artifact = tmp_path / "hgb.joblib"
    joblib.dump(model, artifact)
    store = tmp_path / "store"
    run_cli(store, "models", "register", "hgb", str(artifact), "--activate")
    want = model.predict(pd.DataFrame(ROWS, columns=NAMES, dtype=float)).tolist()

    server = start_server(server_env(store, statsd_port=9, workers=1))
    reply = predict(server.port, ROWS, name="hgb")
    assert reply.status == 200, reply.body
    assert reply.body["predictions"] == want
    tensor = {"name": "input-0", "datatype": "FP64", "shape": [3, 2], "data": ROWS}
    reply = http_request(server.port, "POST", "/v2/models/hgb/infer", {"inputs": [tensor]})
    assert reply.status == 200, reply.body
    assert reply.body["outputs"][0]["data"] == want
    described = http_request(server.port, "GET", "/v1/models/hgb").body["features"]
    assert [f["nullable"] for f in described] == [True, True]
