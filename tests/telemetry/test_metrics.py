"""StatsD metrics over a real UDP socket, batched per process, and fire-and-forget when nobody
listens."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from serving.store.model_store import ModelStore
from serving.telemetry.metrics import StatsdMetrics, metric_part
from serving.telemetry.statsd_batch import FLUSH_SECONDS, MAX_PAYLOAD, packets
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


def _datagrams(sock: socket.socket, until: Callable[[list[bytes]], bool]) -> list[bytes]:
    got: list[bytes] = []
    while not until(got):
        try:
            got.append(sock.recv(65536))
        except TimeoutError:
            break
    return got


def _total(datagrams: list[bytes], name: str) -> float:
    lines = [line for d in datagrams for line in d.decode().split("\n")]
    return sum(float(line.split(":")[1].split("|")[0]) for line in lines if line.startswith(name))


def test_requests_are_batched_into_full_datagrams_with_every_count_and_sample(
    udp: socket.socket,
) -> None:
    metrics = StatsdMetrics("127.0.0.1", udp.getsockname()[1], "t")
    for i in range(300):
        metrics.request(200 if i % 3 else 503, 1.5, "iris", 2, [("setosa", 2), ("virginica", 1)])
    metrics.close()  # sends what is left
    datagrams = _datagrams(udp, lambda got: _total(got, "t.requests.") >= 300)
    timers = [ln for d in datagrams for ln in d.decode().split("\n") if ln.startswith("t.request.")]
    assert (
        _total(datagrams, "t.requests.200:") == 200 and _total(datagrams, "t.requests.503:") == 100
    )
    assert _total(datagrams, "t.predictions.iris.setosa:") == 600
    assert _total(datagrams, "t.predictions.iris.virginica:") == 300
    assert timers == ["t.request.iris.2:1.500000|ms"] * 300  # one sample per request, as before
    assert len(datagrams) < 300 / 20  # ~45 requests per datagram instead of one each
    assert max(len(d) for d in datagrams) <= MAX_PAYLOAD


def test_a_lone_request_is_sent_within_the_flush_interval(udp: socket.socket) -> None:
    metrics = StatsdMetrics("127.0.0.1", udp.getsockname()[1], "t")
    try:
        started = time.monotonic()
        metrics.request(200, 2.0, "iris", 1)
        datagrams = _datagrams(udp, lambda got: bool(got))
        waited = time.monotonic() - started
    finally:
        metrics.close()
    assert sorted(datagrams[0].decode().split("\n")) == [
        "t.request.iris.1:2.000000|ms",
        "t.requests.200:1|c",
    ]
    assert waited < FLUSH_SECONDS + 1.0  # the flusher thread sent it, no other request did


def test_a_forked_worker_batches_on_its_own(udp: socket.socket) -> None:
    metrics = StatsdMetrics("127.0.0.1", udp.getsockname()[1], "t")
    metrics.request(200, 1.0)  # the parent's batch, with its flusher thread
    pid = os.fork()
    if pid == 0:  # the child: a fresh batch and thread, its counts never mixed with the parent's
        metrics.request(201, 1.0)
        metrics.close()
        os._exit(0)
    os.waitpid(pid, 0)
    metrics.close()
    datagrams = _datagrams(udp, lambda got: len(got) >= 2)
    assert sorted(datagrams) == [b"t.requests.200:1|c", b"t.requests.201:1|c"]


@pytest.mark.parametrize("limit", [1, 40, MAX_PAYLOAD])
def test_packets_keep_every_line_and_stay_under_the_limit_unless_one_line_is_longer(
    limit: int,
) -> None:
    lines = [f"m{i}.{'x' * (i % 50)}:{i}|c" for i in range(200)]
    payloads = packets(lines, limit)
    assert [line for p in payloads for line in p.decode().split("\n")] == lines
    assert all(len(p) <= limit or b"\n" not in p for p in payloads)
