"""Measuring one cell: a wrk run against a running server, with CPU, memory and StatsD around it.

The machine is shared: other processes' CPU during a cell is measured ("other_cores"). A cell
they disturbed is measured again, after waiting for a quiet moment, while the run's retry
allowance lasts; the least disturbed attempt is kept and the number of attempts recorded.
"""

from __future__ import annotations

import http.client
import json
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import loadgen, procstat, report
from bench.servers import Server
from bench.statsd_sink import StatsdSink

MAX_ATTEMPTS = 3
_JSON = {"Content-Type": "application/json"}


def predict_path(model: str) -> str:
    """Where a cell posts; the bare app ("-") answers any path, so it gets the same request line."""
    return f"/v1/models/{'lr' if model == '-' else model}/predict"


def check_answers(server: Server, model: str, body: Path, rows: int) -> None:
    """One request before the load: a 200 with one prediction per row, or stop."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", predict_path(model), body.read_bytes(), _JSON)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    predicted = len(json.loads(payload)["predictions"]) if response.status == 200 else -1
    if response.status != 200 or (model != "-" and predicted != rows):
        raise SystemExit(f"{server.name}: {model} answered {response.status}: {payload[:300]!r}")


def wait_for_quiet(limit: float, window: float = 0.5) -> float:
    """Wait (at most `limit` s) until the whole machine is nearly idle; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        busy = procstat.machine_busy_seconds()
        time.sleep(window)
        if (procstat.machine_busy_seconds() - busy) / window < report.NOISY:
            break
    return time.monotonic() - started


@dataclass
class Bench:
    """What every cell needs: durations, request bodies, the StatsD sink, the retry allowance."""

    duration: int
    warmup: int
    bodies: dict[int, Path]
    sink: StatsdSink
    retry_seconds: float
    warmed: set[tuple[str, str, int]] = field(default_factory=set)

    def cell(self, server: Server, model: str, rows: int, conns: int, phase: str) -> dict:
        self._warm(server, model, rows)
        best = self.measure(server, model, rows, conns)
        attempts = 1
        while best["other_cores"] > report.NOISY and attempts < MAX_ATTEMPTS:
            if self.retry_seconds < self.duration + 1:
                break
            waited = wait_for_quiet(min(5.0, self.retry_seconds - self.duration - 1))
            self.retry_seconds -= waited + self.duration + 0.5
            again, attempts = self.measure(server, model, rows, conns), attempts + 1
            best = again if again["other_cores"] < best["other_cores"] else best
        best.update(phase=phase, attempts=attempts)
        print(report.cell_line(best), flush=True)
        return best

    def _warm(self, server: Server, model: str, rows: int) -> None:
        """Before a server's first cell with this body: check the answer, load it briefly."""
        if (server.name, model, rows) not in self.warmed:
            check_answers(server, model, self.bodies[rows], rows)
            loadgen.run(server.url(predict_path(model)), self.bodies[rows], 8, self.warmup)
            self.warmed.add((server.name, model, rows))

    def measure(self, server: Server, model: str, rows: int, conns: int) -> dict[str, Any]:
        """One wrk run; CPU of the server tree and of the machine; what StatsD and the log saw."""
        before = _Counters.read(server, self.sink)
        url = server.url(predict_path(model))
        result = loadgen.run(url, self.bodies[rows], conns, self.duration)
        cpu = procstat.tree_cpu_seconds(server.pid) - before.server_cpu
        busy = procstat.machine_busy_seconds() - before.machine_busy - (_own_cpu() - before.own)
        time.sleep(0.2)  # the last datagrams
        packets, statuses = self.sink.snapshot()
        seen = {k: v - before.statuses.get(k, 0) for k, v in statuses.items()}
        cell = report.cell(
            server.name, model, rows, result, cpu, {k: v for k, v in seen.items() if v}
        )
        cell["other_cores"] = round((busy - cpu - result["wrk_cpu_s"]) / cell["seconds"], 2)
        cell["statsd_packets"] = packets - before.packets
        cell["worker_restarts"] = len(set(server.workers()) - before.workers)
        cell["worker_rss_mib"] = server.worker_rss()
        durations = server.request_durations(before.log_offset)
        cell["app_ms_p50"] = round(statistics.median(durations), 3) if durations else None
        return cell


@dataclass(frozen=True)
class _Counters:
    """Everything read before a cell, to subtract after it."""

    workers: set[int]
    packets: int
    statuses: dict[str, int]
    log_offset: int
    own: float
    server_cpu: float
    machine_busy: float

    @classmethod
    def read(cls, server: Server, sink: StatsdSink) -> _Counters:
        packets, statuses = sink.snapshot()
        return cls(
            set(server.workers()),
            packets,
            statuses,
            server.log_size(),
            _own_cpu(),
            procstat.tree_cpu_seconds(server.pid),
            procstat.machine_busy_seconds(),
        )


def _own_cpu() -> float:
    """CPU of this process (the StatsD sink's thread mostly), left out of "other_cores"."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
