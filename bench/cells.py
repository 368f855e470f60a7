"""Measuring one cell: a wrk run against a running server, with CPU, memory and StatsD around it.

The machine is shared: other processes' CPU during a cell is measured ("other_cores"). A cell
they disturbed is measured again, after waiting for a quiet moment, while the run's retry
allowance lasts; the least disturbed attempt is kept and the number of attempts recorded.
"""

from __future__ import annotations

import http.client
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


def predict_path(server: Server, model: str) -> str:
    """Where a cell posts, in the server's protocol; the bare app ("-") answers any path, so it
    gets the same request line as ours."""
    return server.protocol.path("lr" if model == "-" else model)


def check_answers(server: Server, model: str, body: Path, rows: int) -> list[Any]:
    """One request before the load: a 200 with one prediction per row, or stop; the predictions."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("POST", predict_path(server, model), body.read_bytes(), _JSON)
        response = conn.getresponse()
        status, payload = response.status, response.read()
    except OSError as exc:
        raise SystemExit(f"{server.name}: {model}: no answer ({exc})") from exc
    finally:
        conn.close()
    if status != 200:
        raise SystemExit(f"{server.name}: {model} answered {status}: {payload[:300]!r}")
    if model == "-":
        return []
    try:
        predictions = server.protocol.predictions(payload)
    except ValueError as exc:
        raise SystemExit(f"{server.name}: {model}: {exc}: {payload[:300]!r}") from exc
    if len(predictions) != rows:
        raise SystemExit(f"{server.name}: {model}: {len(predictions)} predictions for {rows} rows")
    return predictions


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
    """What every cell needs: durations, request bodies, the StatsD sink, the retry allowance.

    `bodies`: {(protocol name, rows): file}; `answers`: {(server, model, rows): the predictions
    of the request checked before the server's first cell with that body}.
    """

    duration: int
    warmup: int
    bodies: dict[tuple[str, int], Path]
    sink: StatsdSink
    retry_seconds: float
    answers: dict[tuple[str, str, int], list[Any]] = field(default_factory=dict)

    def body(self, server: Server, rows: int) -> Path:
        return self.bodies[(server.protocol.name, rows)]

    def cell(self, server: Server, model: str, rows: int, conns: int, phase: str) -> dict:
        try:
            self.warm(server, model, rows)
            best = self.measure(server, model, rows, conns)
        except SystemExit as exc:
            if server.proc is not None and server.proc.poll() is not None:
                raise SystemExit(
                    f"{exc}\n{server.name} exited ({server.proc.returncode}); log ends:\n"
                    f"{server.log_tail()}"
                ) from exc
            raise
        attempts = 1
        while best["other_cores"] > report.NOISY and attempts < MAX_ATTEMPTS:
            if self.retry_seconds < self.duration + 1:
                break
            waited = wait_for_quiet(min(5.0, self.retry_seconds - self.duration - 1))
            self.retry_seconds -= waited + self.duration + 0.5
            again, attempts = self.measure(server, model, rows, conns), attempts + 1
            best = again if again["other_cores"] < best["other_cores"] else best
        best.update(phase=phase, attempts=attempts, contestant=server.contestant)
        print(report.cell_line(best), flush=True)
        return best

    def warm(self, server: Server, model: str, rows: int) -> None:
        """Before a server's first cell with this body: check the answer, load it briefly."""
        key = (server.name, model, rows)
        if key not in self.answers:
            self.answers[key] = check_answers(server, model, self.body(server, rows), rows)
            loadgen.run(
                server.url(predict_path(server, model)), self.body(server, rows), 8, self.warmup
            )

    def measure(self, server: Server, model: str, rows: int, conns: int) -> dict[str, Any]:
        """One wrk run; CPU of the server tree and of the machine; what StatsD and the log saw."""
        before = _Counters.read(server, self.sink)
        url = server.url(predict_path(server, model))
        result = loadgen.run(url, self.body(server, rows), conns, self.duration)
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
