"""Traffic over time, summed over every worker: requests per 10 s bucket, status and latency bin.

The request path (`TrafficQueue.count`, from the after-request hook) appends one small tuple to
a per-worker deque (about 0.2 µs; `deque.append` and `popleft` are atomic, so no lock). The
drift monitor's flusher thread drains it every `SERVING_MONITOR_FLUSH` seconds into counts keyed
(bucket, model, version, variant, status, latency bin) and adds them to the `traffic_counts`
table in the same transaction as the drift counts. The prediction log is not used: it may be
sampled, and throughput must count every request.

Latency bins are log-spaced, 20 per decade from 0.1 ms to 100 s (each bin 12% wide), so a
percentile estimated from a histogram (log-interpolated inside its bin) is within a few percent
of the exact one, and any number of buckets and workers merge by addition.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

BUCKET_SECONDS = 10
BINS_PER_DECADE = 20
# Upper edges (ms): bin 0 is below 0.1 ms, bin i covers [EDGES_MS[i-1], EDGES_MS[i]), the last
# bin (len(EDGES_MS)) is 100 s and beyond.
EDGES_MS: tuple[float, ...] = tuple(10 ** (k / BINS_PER_DECADE) for k in range(-20, 101))
MAX_PENDING = 500_000  # requests queued per worker between flushes; beyond: dropped, counted
MIGRATION = [
    "CREATE TABLE traffic_counts (bucket BIGINT NOT NULL, model TEXT NOT NULL,"
    " version INTEGER NOT NULL, variant TEXT NOT NULL, status INTEGER NOT NULL,"
    " bin INTEGER NOT NULL, n INTEGER NOT NULL,"
    " PRIMARY KEY (bucket, model, version, variant, status, bin)){without_rowid}",
]
UPSERT = (
    "INSERT INTO traffic_counts (bucket, model, version, variant, status, bin, n)"
    " VALUES (?,?,?,?,?,?,?) ON CONFLICT (bucket, model, version, variant, status, bin)"
    " DO UPDATE SET n = traffic_counts.n + excluded.n"
)
# model "" = a prediction request refused before it chose a model (malformed, unknown model);
# version 0 = no version chosen; variant "" = the alias is not split (or a pinned version).
Key = tuple[int, str, int, str, int, int]


def latency_bin(duration_ms: float) -> int:
    return bisect_right(EDGES_MS, duration_ms)


def bin_bounds(index: int) -> tuple[float, float]:
    """(low, high) of a latency bin in ms; the open-ended ends are closed at their edge."""
    low = EDGES_MS[index - 1] if index > 0 else 0.0
    high = EDGES_MS[index] if index < len(EDGES_MS) else EDGES_MS[-1]
    return low, max(high, low)


def percentile(histogram: Mapping[int, float], q: float) -> float | None:
    """The `q` quantile (0..1) in ms of a latency histogram (bin -> count); None when empty."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    target, seen = q * total, 0.0
    for index in sorted(histogram):
        n = histogram[index]
        if n <= 0:
            continue
        if seen + n >= target:
            low, high = bin_bounds(index)
            share = min(max((target - seen) / n, 0.0), 1.0)
            if low <= 0:
                return high * share
            return low * math.exp(share * math.log(high / low))
        seen += n
    return bin_bounds(max(histogram))[1]


class TrafficQueue:
    """This worker's finished requests, waiting for the flusher to count them."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._queue: deque[tuple[Any, ...]] = deque()
        self.dropped = 0

    def count(
        self, model: str | None, version: int | None, variant: str | None, status: int, ms: float
    ) -> None:
        """One finished request (hot path)."""
        if len(self._queue) >= MAX_PENDING:
            self.dropped += 1
            return
        self._queue.append((self._clock(), model, version, variant, status, ms))

    def drain(self) -> Counter[Key]:
        """Bin and count everything queued (flusher thread)."""
        counts: Counter[Key] = Counter()
        queue = self._queue
        while queue:
            at, model, version, variant, status, ms = queue.popleft()
            bucket = int(at // BUCKET_SECONDS) * BUCKET_SECONDS
            counts[(bucket, model or "", version or 0, variant or "", status, latency_bin(ms))] += 1
        return counts

    def reset(self) -> None:
        """A forked child's queue starts empty (what it inherited is its parent's)."""
        self._queue = deque()
