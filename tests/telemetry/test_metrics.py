"""StatsD metrics over a real UDP socket, and fire-and-forget when nobody listens."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from serving.store.model_store import ModelStore
from serving.telemetry.metrics import StatsdMetrics, metric_part
from tests.conftest import IRIS_ROW


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def _drain(sock: socket.socket, until: Callable[[set[str]], bool]) -> set[str]:
    seen: set[str] = set()
    while not until(seen):
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        seen.update(data.decode().splitlines())
    return seen


def test_a_prediction_sends_timer_status_and_class_counters(
    served: ModelStore, make_app: Callable[..., Flask], udp: socket.socket
) -> None:
    port = udp.getsockname()[1]
    app = make_app(statsd_host="127.0.0.1", statsd_port=port, statsd_prefix="t")
    rows = [IRIS_ROW, IRIS_ROW, [6.7, 3.0, 5.2, 2.3]]
    response = app.test_client().post("/v1/models/iris/predict", json={"instances": rows})
    assert response.status_code == 200
    lines = _drain(udp, lambda s: any(x.startswith("t.request.iris.1:") for x in s))
    assert "t.requests.200:1|c" in lines
    assert "t.predictions.iris.setosa:2|c" in lines
    assert "t.predictions.iris.virginica:1|c" in lines
    timer = next(x for x in lines if x.startswith("t.request.iris.1:"))
    assert timer.endswith("|ms") and float(timer.split(":")[1].split("|")[0]) > 0
    assert "t.model.iris.swap.success:1|c" in lines  # the load at app start
    assert "t.model.iris.production.version:1|g" in lines


def test_errors_are_counted_by_status(
    served: ModelStore, make_app: Callable[..., Flask], udp: socket.socket
) -> None:
    app = make_app(statsd_host="127.0.0.1", statsd_port=udp.getsockname()[1], statsd_prefix="t")
    app.test_client().post("/v1/models/iris/predict", json={"instances": [[1, 2]]})
    assert "t.requests.422:1|c" in _drain(udp, lambda s: "t.requests.422:1|c" in s)


def test_nothing_listening_never_fails_a_request(
    served: ModelStore, make_app: Callable[..., Flask]
) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()
    app = make_app(statsd_host="127.0.0.1", statsd_port=dead_port)
    client = app.test_client()
    for _ in range(20):  # ICMP port-unreachable makes later sends fail: they must be swallowed
        response = client.post("/v1/models/iris/predict", json={"instances": [IRIS_ROW]})
        assert response.status_code == 200


def test_unresolvable_host_turns_metrics_off_instead_of_failing() -> None:
    metrics = StatsdMetrics("no-such-host.invalid", 8125, "x")
    metrics.request(200, 1.0, "m", 1)
    metrics.swap("m", ok=True)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [("iris", "iris"), ("my.model", "my_model"), ("a:b|c", "a_b_c"), ("", "_"), (3, "3")],
    ids=["plain", "dot", "statsd-syntax", "empty", "number"],
)
def test_metric_name_parts_cannot_break_the_protocol(raw: object, safe: str) -> None:
    assert metric_part(raw) == safe
