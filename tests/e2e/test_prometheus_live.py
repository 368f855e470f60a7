"""GET /metrics on a real 2-worker gunicorn: whichever worker answers, the counters are the sum
of both; a worker killed with SIGKILL keeps its counts and loses its live gauges; a restart
starts from zero."""

from __future__ import annotations

import collections
import os
import signal
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.e2e.conftest import (
    IRIS_ROW,
    GunicornServer,
    http_request,
    predict,
    server_env,
    statsd_listener,
    survey_workers,
    wait_for_replacement,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROWS = [IRIS_ROW, [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]
REQUEST_TIMEOUT = 60.0


def both_workers(port: int) -> set[int]:
    """The pids of the 2 workers, once both answer (the second may still be loading models)."""

    def seen() -> set[int] | None:
        pids = set(survey_workers(port, 2, tries=50, strict=False))
        return pids if len(pids) == 2 else None

    return wait_until(seen, 30, "both workers to answer", step=0.1)  # type: ignore[no-any-return]


def send(port: int, oks: int, bad: int) -> collections.Counter[str]:
    """`oks` one-row predictions and `bad` 422s from 4 threads (so both workers take some);
    the count of each predicted class."""

    def one(i: int) -> str | None:
        if i < bad:
            reply = predict(port, [[1.0, 2.0]])  # wrong feature count: 422, model labelled
            assert reply.status == 422, reply.raw
            return None
        reply = predict(port, [ROWS[i % len(ROWS)]])
        assert reply.status == 200, reply.raw
        return str(reply.body["predictions"][0])

    with ThreadPoolExecutor(4) as pool:
        labels = list(pool.map(one, range(oks + bad), timeout=REQUEST_TIMEOUT))
    return collections.Counter(label for label in labels if label is not None)


def scrape(server: GunicornServer) -> tuple[int, list[Sample]]:
    """(pid of the worker that answered, the samples); the pid from its request log line."""
    request_id = uuid.uuid4().hex
    reply = http_request(server.port, "GET", "/metrics", headers={"X-Request-ID": request_id})
    assert reply.status == 200, reply.raw
    assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = text_string_to_metric_families(reply.raw.decode())
    samples = [s for family in families for s in family.samples]
    record = server.wait_for_record(
        lambda r: r.get("request_id") == request_id and r.get("logger") == "serving.request",
        "the log line of a scrape",
    )
    return int(record["process"]), samples


def scrape_every_worker(server: GunicornServer, workers: set[int]) -> list[Sample]:
    """Scrape until each worker has answered once; every answer must be the same counts."""
    answers: dict[int, list[Sample]] = {}

    def all_answered() -> bool:
        pid, samples = scrape(server)
        answers[pid] = samples
        return workers <= set(answers)

    wait_until(all_answered, 30, f"a scrape answered by each of {sorted(workers)}", step=0)
    views = [counts(samples) for samples in answers.values()]
    assert all(view == views[0] for view in views), views
    return answers[min(workers)]


def counts(samples: list[Sample]) -> dict[tuple, float]:
    """Every model-labelled counter and histogram count: what must not depend on the worker."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for s in samples
        if s.name
        in (
            "serving_requests_total",
            "serving_predictions_total",
            "serving_request_duration_seconds_count",
        )
        and s.labels.get("model")
    }


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, found
    return found[0] if found else None


def pids_of(samples: list[Sample], name: str) -> set[int]:
    return {int(s.labels["pid"]) for s in samples if s.name == name}


def check_totals(samples: list[Sample], oks: int, bad: int, classes: collections.Counter) -> None:
    iris = {"model": "iris", "version": "1", "variant": ""}
    assert value(samples, "serving_requests_total", status="200", **iris) == oks
    assert (value(samples, "serving_requests_total", status="422", **iris) or 0) == bad
    assert value(samples, "serving_request_duration_seconds_count", **iris) == oks + bad
    by_class = {
        s.labels["class"]: s.value for s in samples if s.name == "serving_predictions_total"
    }
    assert by_class == dict(classes)


def test_metrics_sum_both_workers_and_survive_a_killed_one(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer]
) -> None:
    with statsd_listener() as statsd:
        server = start_server(server_env(copy_store(), statsd.port, workers=2))
        workers = both_workers(server.port)
        classes = send(server.port, oks=60, bad=10)
        assert server.served_by("iris", workers) == workers  # the sums are over two workers

        samples = scrape_every_worker(server, workers)
        check_totals(samples, 60, 10, classes)
        assert pids_of(samples, "serving_process_cpu_seconds_total") == workers
        assert pids_of(samples, "serving_process_resident_memory_bytes") == workers
        assert pids_of(samples, "serving_model_version") == workers
        assert value(samples, "serving_in_flight_requests") == 0
        for pid in workers:
            labels = {"model": "iris", "alias": "production", "pid": str(pid)}
            assert value(samples, "serving_model_version", **labels) == 1
        swaps = value(samples, "serving_model_swaps_total", model="iris", result="success")
        assert swaps == 2  # one load per worker

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        workers = set(wait_for_replacement(server.port, victim, 2))
        samples = scrape_every_worker(server, workers)
        check_totals(samples, 60, 10, classes)  # the dead worker's counts are kept
        assert pids_of(samples, "serving_process_cpu_seconds_total") == workers
        assert pids_of(samples, "serving_model_version") == workers  # its live gauges are not
        assert value(samples, "serving_in_flight_requests") == 0
        swaps = value(samples, "serving_model_swaps_total", model="iris", result="success")
        assert swaps == 3  # the replacement loaded iris too

        classes += send(server.port, oks=20, bad=5)
        check_totals(scrape_every_worker(server, workers), 80, 15, classes)

        directory = _multiproc_dir(server)
        assert server.stop() == 0
    assert not os.path.exists(directory)  # the directory gunicorn.conf.py made is gone


def test_a_restart_starts_from_zero_in_a_fixed_directory(
    copy_store: Callable[[], Path],
    start_server: Callable[..., GunicornServer],
    tmp_path: Path,
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    store = copy_store()
    with statsd_listener() as statsd:
        env = server_env(store, statsd.port, extra={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
        first = start_server(env)
        workers = both_workers(first.port)
        classes = send(first.port, oks=5, bad=0)
        check_totals(scrape_every_worker(first, workers), 5, 0, classes)
        assert _multiproc_dir(first) == str(directory)
        assert first.stop() == 0
        assert list(directory.glob("counter_*.db"))  # what a restart must not add up

        second = start_server(env)
        classes = send(second.port, oks=3, bad=1)
        workers = both_workers(second.port)
        check_totals(scrape_every_worker(second, workers), 3, 1, classes)
        assert second.stop() == 0
    assert directory.is_dir()  # an operator's directory is emptied at start, never removed


def _multiproc_dir(server: GunicornServer) -> str:
    record = server.wait_for_record(
        lambda r: str(r.get("message", "")).startswith("prometheus multiprocess directory "),
        "the prometheus directory log line",
    )
    return str(record["message"]).rsplit(" ", 1)[1]
