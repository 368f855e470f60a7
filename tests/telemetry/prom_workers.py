"""Two forked "workers" in prometheus_client's multiprocess mode, without gunicorn.

    PROMETHEUS_MULTIPROC_DIR=DIR python -m tests.telemetry.prom_workers

Run in its own process by tests/test_prometheus.py (the mode is chosen when prometheus_client is
first imported, so the pytest process cannot switch to it). Worker A records 3 predictions and
exits; its death is bookkept as gunicorn's `child_exit` does; worker B records 2 predictions and
a 422 and stays alive while the parent scrapes. Prints {"pids": {...}, "text": scrape}.
"""

from __future__ import annotations

import json
import os

from prometheus_client.multiprocess import mark_process_dead

from serving.telemetry.prometheus import PrometheusMetrics


def _worker(metrics: PrometheusMetrics, oks: int, errors: int) -> None:
    metrics.serving_version("iris", "production", 1)
    metrics.request_started()  # one request left in flight: a live gauge
    for _ in range(oks):
        metrics.request(200, 1.5, "iris", 1, [("setosa", 1)])
    for _ in range(errors):
        metrics.request(422, 0.5, "iris", 1)
    metrics.sample()


def main() -> None:
    metrics = PrometheusMetrics()
    assert metrics.multiprocess, "run with PROMETHEUS_MULTIPROC_DIR set"
    a = os.fork()
    if a == 0:
        _worker(metrics, 3, 0)
        os._exit(0)
    os.waitpid(a, 0)
    mark_process_dead(a)  # what gunicorn.conf.py's child_exit does
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    b = os.fork()
    if b == 0:
        _worker(metrics, 2, 1)
        os.write(ready_w, b"x")
        os.read(done_r, 1)  # alive until the parent has scraped
        os._exit(0)
    os.read(ready_r, 1)
    text = metrics.render().decode()
    os.write(done_w, b"x")
    os.waitpid(b, 0)
    print(json.dumps({"pids": {"parent": os.getpid(), "dead": a, "alive": b}, "text": text}))


if __name__ == "__main__":
    main()
