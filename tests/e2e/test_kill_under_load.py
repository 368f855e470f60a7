"""End-to-end: a worker killed with -9 under load costs at most its in-flight request (a sync
worker holds one); the arbiter replaces it and every other request is answered."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import (
    IRIS_ROW,
    GunicornServer,
    predict,
    server_env,
    statsd_listener,
    survey_workers,
    wait_for_replacement,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKERS = 2
CLIENTS = 4


def _client(port: int, stop: threading.Event, outcomes: list[str]) -> None:
    while not stop.is_set():
        try:
            outcomes.append(str(predict(port, [IRIS_ROW], timeout=10).status))
        except Exception as exc:  # a reset connection is an outcome to count
            outcomes.append(type(exc).__name__)


def test_a_worker_killed_under_load_costs_at_most_its_in_flight_request(
    start_server: Callable[..., GunicornServer], copy_store: Callable[[], Path]
) -> None:
    store = copy_store()
    with statsd_listener() as statsd:
        server = start_server(server_env(store, statsd.port, WORKERS))
        victim = next(iter(survey_workers(server.port, WORKERS)))
        stop = threading.Event()
        per_client: list[list[str]] = [[] for _ in range(CLIENTS)]
        clients = [
            threading.Thread(target=_client, args=(server.port, stop, out), daemon=True)
            for out in per_client
        ]
        for client in clients:
            client.start()
        try:
            time.sleep(1.5)
            os.kill(victim, signal.SIGKILL)
            wait_for_replacement(server.port, victim, WORKERS)
            time.sleep(1.5)  # the replacement serves under load too
        finally:
            stop.set()
            for client in clients:
                client.join(timeout=15)
        server.stop()
    outcomes = Counter(item for items in per_client for item in items)
    lost = sum(count for outcome, count in outcomes.items() if outcome != "200")
    print(f"\nkill -9 under load: {dict(outcomes)}; {lost} lost of {sum(outcomes.values())}")
    assert outcomes["200"] > 100
    assert lost <= 1, outcomes  # the killed sync worker's one request in flight
