"""SERVING_REQUEST_TIMEOUT: a prediction past it answers 504 in each protocol's shape, is logged,
and the same worker answers the next request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from serving.store.model_store import ModelStore
from tests.slow_model import POISON, slow_artifact

ROW = [1.0, 2.0, 3.0, 4.0]
BAD = [POISON, 2.0, 3.0, 4.0]


@pytest.fixture
def app(store: ModelStore, tmp_path: Path, make_app: Callable[..., Flask]) -> Flask:
    store.register("slow", slow_artifact(tmp_path / "slow.joblib"), activate=True, actor="t")
    return make_app(request_timeout=0.5, default_model="slow")


def _v2(row: list[float]) -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": row}]}


@pytest.mark.parametrize(
    ("path", "body", "shape_key"),
    [
        ("/v1/models/slow/predict", lambda r: {"instances": [r]}, "error"),
        ("/v2/models/slow/infer", _v2, "error"),
        ("/invocations", lambda r: {"instances": [r]}, "error_code"),
    ],
    ids=["v1", "v2", "mlflow"],
)
def test_a_prediction_past_the_deadline_is_a_504_and_the_next_one_is_answered(
    app: Flask, caplog: pytest.LogCaptureFixture, path: str, body: Callable, shape_key: str
) -> None:
    client = app.test_client()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="serving.dataplane.core"):
        slow = client.post(path, json=body(BAD))
    assert slow.status_code == 504, slow.get_data(as_text=True)
    assert time.monotonic() - started < 5  # not the model's 30 s
    assert shape_key in slow.get_json()
    assert "SERVING_REQUEST_TIMEOUT" in slow.get_data(as_text=True)
    assert any(getattr(r, "event", None) == "request_timeout" for r in caplog.records)
    assert client.post(path, json=body(ROW)).status_code == 200  # the worker carries on


def test_no_deadline_when_it_is_off(
    store: ModelStore, tmp_path: Path, make_app: Callable[..., Flask]
) -> None:
    artifact = slow_artifact(tmp_path / "brief.joblib", seconds=0.6)
    store.register("slow", artifact, activate=True, actor="t")
    client = make_app(request_timeout=0.0).test_client()
    response = client.post("/v1/models/slow/predict", json={"instances": [BAD]})
    assert response.status_code == 200


def _busy(seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


def test_the_deadline_lands_in_the_greenlet_that_armed_it() -> None:
    """gevent workers: greenlets share the main OS thread. An alarm that fires while another
    greenlet runs is not that one's error; it reaches the armed greenlet when that one runs."""
    from greenlet import greenlet

    from serving.runtime import deadline

    seen: list[str] = []

    def armed() -> None:
        assert deadline.arm(0.1)
        try:
            bystander.switch()  # as if the prediction waited on I/O
            _busy(2.0)
            seen.append("armed: no timeout")
        except deadline.RequestTimeout:
            seen.append("armed: timeout")
        finally:
            deadline.disarm()

    def other() -> None:
        _busy(0.3)  # the alarm fires while this greenlet runs
        seen.append("bystander: done")
        first.switch()

    first, bystander = greenlet(armed), greenlet(other)
    started = time.monotonic()
    first.switch()
    assert seen == ["bystander: done", "armed: timeout"]
    assert time.monotonic() - started < 1.0
