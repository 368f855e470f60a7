"""gthread workers (GUNICORN_WORKER_CLASS=gthread): keep-alive clients, exact counts, a swap.

Web backends keep connection pools; with gthread a connection serves many requests and the
threads of one worker share its loader, caches, metrics and prediction log. Nothing may be
lost or counted twice between threads.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    IRIS_ROW,
    GunicornServer,
    http_request,
    run_cli,
    server_env,
    statsd_listener,
    wait_until,
)

pytestmark = pytest.mark.e2e

CLIENTS = 8
PER_CLIENT = 150


def test_keep_alive_clients_on_gthread_workers_lose_nothing_across_a_swap(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer]
) -> None:
    store = copy_store()
    with statsd_listener() as statsd:
        extra = {"GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "4"}
        server = start_server(server_env(store, statsd.port, 2, extra))
        statuses: Counter[int] = Counter()
        versions: Counter[int] = Counter()
        connections: Counter[str] = Counter()
        errors: list[str] = []
        lock = threading.Lock()
        half = threading.Barrier(CLIENTS + 1)
        body = json.dumps({"instances": [IRIS_ROW]})

        def client(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                for i in range(PER_CLIENT):
                    if i == PER_CLIENT // 2:
                        half.wait(timeout=60)  # the promote happens here, mid-traffic
                    conn.request(
                        "POST",
                        "/v1/models/iris/predict",
                        body,
                        {"Content-Type": "application/json"},
                    )
                    response = conn.getresponse()
                    payload = json.loads(response.read())
                    with lock:
                        statuses[response.status] += 1
                        versions[payload.get("version", -1)] += 1
                        connections[response.getheader("Connection") or "keep-alive"] += 1
            except Exception as exc:
                with lock:
                    errors.append(f"client {index}: {type(exc).__name__}: {exc}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        half.wait(timeout=60)
        run_cli(store, "models", "promote", "iris", "2")
        for thread in threads:
            thread.join(timeout=120)

        total = CLIENTS * PER_CLIENT
        assert not errors, errors
        assert statuses == {200: total}
        assert set(versions) <= {1, 2} and versions[1] > 0
        # the connections stayed open: one TCP connection per client for all its requests
        assert connections == {"keep-alive": total}
        wait_until(
            lambda: all(
                http_request(server.port, "GET", "/v1/models/iris").body["serving"]["production"]
                == 2
                for _ in range(6)
            ),
            30,
            "every worker serving iris v2",
        )

        # every request counted once, by StatsD and by Prometheus, whichever thread served it
        def rows_counted() -> int:  # predictions.<model>.<class>: one per predicted row
            return sum(
                int(line.split(":")[1].split("|")[0])
                for line in statsd.metrics()
                if line.startswith("test.predictions.iris.")
            )

        wait_until(lambda: rows_counted() >= total, 10, "the StatsD prediction counters")
        assert rows_counted() == total
        scrape = http_request(server.port, "GET", "/metrics").raw.decode()
        predicted = sum(
            sample.value
            for family in text_string_to_metric_families(scrape)
            for sample in family.samples
            if sample.name == "serving_requests_total"
            and sample.labels.get("model") == "iris"
            and sample.labels.get("status") == "200"
        )
        assert predicted == total
