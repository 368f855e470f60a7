"""HUP under load on real gunicorn (gevent and sync): new workers load their models while the
old ones keep serving, so no request fails and traffic never stops for longer than a request
(before: every request waited 1.8-9 s for the new workers' boot)."""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import (
    IRIS_ROW,
    GunicornServer,
    predict,
    server_env,
    survey_workers,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
WORKERS = 2
CLIENTS = 4
# The longest time without any answer while workers are replaced: a few requests' worth on a
# busy 2-core machine (the new workers' imports and model loads take both cores meanwhile).
LONGEST_GAP_S = 1.0


class Load:
    """CLIENTS threads predicting until stopped; every answer's (time, status) kept."""

    def __init__(self, port: int) -> None:
        self.port, self.answers, self.errors = port, [], []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                status = predict(self.port, [IRIS_ROW], timeout=15).status
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            self.answers.append((time.monotonic(), status))

    def longest_gap(self) -> float:
        times = sorted(t for t, _ in self.answers)
        return max(b - a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("worker_class", ["gevent", "sync"])
def test_hup_under_load_stalls_nothing(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer], worker_class: str
) -> None:
    store = copy_store()
    env = server_env(store, 9, WORKERS, {"GUNICORN_WORKER_CLASS": worker_class})
    server = start_server(env)
    old = set(survey_workers(server.port, WORKERS))
    with Load(server.port) as load:
        time.sleep(1.0)
        server.signal(signal.SIGHUP)
        wait_until(
            lambda: not set(survey_workers(server.port, WORKERS, strict=False)) & old,
            30,
            "only new workers answering",
        )
        time.sleep(0.5)
    statuses = {status for _, status in load.answers}
    print(f"{len(load.answers)} answers, longest gap {load.longest_gap():.3f} s")
    assert load.errors == [] and statuses == {200}, (load.errors[:3], statuses)
    assert load.longest_gap() < LONGEST_GAP_S, load.longest_gap()
    assert any("reload: new workers ready after" in line for line in server.lines)
