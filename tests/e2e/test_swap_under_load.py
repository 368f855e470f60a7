"""End-to-end: hot swap under load. Clients never see an error while versions change under them."""

from __future__ import annotations

import json
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import (
    IRIS_ROW,
    SWAP_DEADLINE,
    GunicornServer,
    deployment_changed_at,
    finish_cli,
    predict,
    reap,
    server_env,
    sleep_until,
    start_cli,
    statsd_listener,
    survey_workers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKERS = 2
CLIENTS = 4
LOAD_SECONDS = 10.0
PROMOTE_EVERY = 1.0
MAX_CLI_IN_FLIGHT = 2


@pytest.fixture(scope="module")
def load_server(
    start_server: Callable[..., GunicornServer], copy_store: Callable[[], Path]
) -> Iterator[tuple[GunicornServer, Path]]:
    store = copy_store()
    with statsd_listener() as statsd:
        server = start_server(server_env(store, statsd.port, WORKERS))
        yield server, store
        server.stop()


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _client(port: int, stop: threading.Event, outcomes: list[tuple[str, str, float]]) -> None:
    """Single-row predictions back to back; (outcome, version, seconds) per request."""
    while not stop.is_set():
        started = time.perf_counter()
        try:
            reply = predict(port, [IRIS_ROW], timeout=10)
        except Exception as exc:  # a connection error is an outcome to count, not a crash
            outcomes.append((type(exc).__name__, "", time.perf_counter() - started))
            continue
        version = reply.headers.get("x-model-version", "")
        outcomes.append((str(reply.status), version, time.perf_counter() - started))


def test_promotes_under_load_lose_no_request(load_server: tuple[GunicornServer, Path]) -> None:
    server, store = load_server
    stop = threading.Event()
    per_client: list[list[tuple[str, str, float]]] = [[] for _ in range(CLIENTS)]
    clients = [
        threading.Thread(target=_client, args=(server.port, stop, outcomes), daemon=True)
        for outcomes in per_client
    ]
    promotes: list[subprocess.Popen] = []
    started = time.monotonic()
    for client in clients:
        client.start()
    try:
        # A promote per second, alternating 2 and 1. One CLI run can take more than a second
        # under this load (it imports scikit-learn): up to two overlap, the store's lock
        # orders their writes.
        while time.monotonic() - started < LOAD_SECONDS:
            if sum(proc.poll() is None for proc in promotes) < MAX_CLI_IN_FLIGHT:
                version = "2" if len(promotes) % 2 == 0 else "1"
                promotes.append(start_cli(store, "models", "promote", "iris", version))
                next_promote = started + len(promotes) * PROMOTE_EVERY
                time.sleep(max(0.0, min(next_promote, started + LOAD_SECONDS) - time.monotonic()))
            else:
                time.sleep(0.05)
        for proc in promotes:
            finish_cli(proc)
        sleep_until(deployment_changed_at(store, "iris") + SWAP_DEADLINE)  # last swap under load
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=15)
        for proc in promotes:
            reap(proc)
    elapsed = time.monotonic() - started
    assert not any(client.is_alive() for client in clients)

    outcomes = [item for items in per_client for item in items]
    statuses = Counter(status for status, _, _ in outcomes)
    versions = Counter(version for _, version, _ in outcomes)
    latencies = sorted(seconds * 1000 for _, _, seconds in outcomes)
    print(
        f"\nswap under load: {len(outcomes)} requests from {CLIENTS} clients in {elapsed:.1f}s "
        f"({len(outcomes) / elapsed:.0f}/s), {len(promotes)} promotes; "
        f"outcomes {dict(statuses)}; versions {dict(versions)}; latency under load "
        f"median {statistics.median(latencies):.1f} ms, p99 {_percentile(latencies, 99):.1f} ms"
    )
    assert statuses == Counter({"200": len(outcomes)})
    assert set(versions) == {"1", "2"}
    assert len(promotes) >= 3  # 2, 1, 2: a swap each way at least

    # Once the promotes stop, every worker serves whatever the last one to write left.
    final = json.loads((store / "iris" / "deployment.json").read_bytes())["aliases"]["production"]
    workers = survey_workers(server.port, WORKERS)
    assert {body["serving"]["production"] for body in workers.values()} == {final}


def test_single_row_latency(load_server: tuple[GunicornServer, Path]) -> None:
    server, _ = load_server
    for _ in range(20):  # warm up both workers
        predict(server.port, [IRIS_ROW])
    latencies = []
    deadline = time.monotonic() + 10
    while len(latencies) < 500 and time.monotonic() < deadline:
        started = time.perf_counter()
        reply = predict(server.port, [IRIS_ROW])
        latencies.append((time.perf_counter() - started) * 1000)
        assert reply.status == 200, reply.raw

    median, p99 = statistics.median(latencies), _percentile(latencies, 99)
    print(
        f"\nsingle-row latency, one client, new connection each: {len(latencies)} requests, "
        f"median {median:.2f} ms, p99 {p99:.2f} ms"
    )
    assert len(latencies) >= 100
    assert median < 100  # generous: a loose sanity bound, not a benchmark
