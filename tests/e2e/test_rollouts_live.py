"""End-to-end rollouts through the admin API of a real 2-worker gunicorn server.

Sticky splits hold across workers, a canary rolled back under load loses no request, and the
operator's 90/10 canary flow (route, watch, promote) ends with every worker on the new version.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    IRIS_ROW,
    GunicornServer,
    Reply,
    http_request,
    predict,
    server_env,
    statsd_listener,
    survey_workers,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOKEN = "t0k"
WORKERS = 2
CONVERGE_TIMEOUT = 10.0
CLIENTS = 4
LOAD_SECONDS = 6.0


@pytest.fixture(scope="module")
def server(
    start_server: Callable[..., GunicornServer], copy_store: Callable[[], Path]
) -> Iterator[GunicornServer]:
    with statsd_listener() as statsd:
        env = server_env(copy_store(), statsd.port, WORKERS, extra={"SERVING_ADMIN_TOKEN": TOKEN})
        server = start_server(env)
        yield server
        server.stop()


@pytest.fixture(autouse=True)
def production_on_v1(server: GunicornServer) -> None:
    """Each test starts from iris production = 1, no split, on every worker."""
    assert admin(server.port, "promote", {"version": 1}).status == 200
    converge(server.port, serves_only(1), "every worker on version 1, unsplit")


def admin(port: int, action: str, payload: Any = None, method: str = "POST") -> Reply:
    return http_request(
        port,
        method,
        f"/v1/admin/models/iris/{action}",
        payload,
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def converge(port: int, check: Callable[[dict], bool], what: str) -> dict[int, dict]:
    """Survey GET /v1/models/iris until every worker's own answer passes `check`."""

    def all_workers() -> dict[int, dict] | None:
        seen = survey_workers(port, WORKERS, tries=60, strict=False)
        return seen if len(seen) == WORKERS and all(map(check, seen.values())) else None

    return wait_until(all_workers, CONVERGE_TIMEOUT, what, step=0.05)


def split_between(*versions: int, sticky: bool) -> Callable[[dict], bool]:
    def check(body: dict) -> bool:
        live = body["worker"]["routes"].get("production")
        return (
            live is not None
            and [v["version"] for v in live["variants"]] == list(versions)
            and live["sticky"] is sticky
        )

    return check


def serves_only(version: int) -> Callable[[dict], bool]:
    def check(body: dict) -> bool:
        return body["serving"].get("production") == version and not body["worker"]["routes"]

    return check


def test_sticky_split_gives_a_key_one_variant_on_every_worker(server: GunicornServer) -> None:
    reply = admin(server.port, "route", {"weights": {"1": 50, "2": 50}, "sticky": True})
    assert reply.status == 200, reply.raw
    converge(server.port, split_between(1, 2, sticky=True), "every worker on the 50/50 split")

    variants: dict[str, set[str]] = {}
    for round_ in range(5):
        for k in range(40):
            key = f"user-{k}"
            reply = predict(
                server.port,
                [IRIS_ROW],
                headers={"X-Routing-Key": key, "X-Request-ID": f"sticky-{k}-{round_}"},
            )
            assert reply.status == 200, reply.raw
            assert reply.headers["x-model-variant"] == reply.body["variant"]
            assert reply.body["variant"] == f"v{reply.body['version']}"
            variants.setdefault(key, set()).add(reply.body["variant"])

    # Which worker answered each request: the pid of its log line, found by request id.
    def logged() -> dict[str, int] | None:
        pids = {
            r["request_id"]: r["process"]
            for r in server.records()
            if str(r.get("request_id", "")).startswith("sticky-") and r.get("message") == "request"
        }
        return pids if len(pids) == 200 else None

    pids = wait_until(logged, 5, "200 request log lines")
    workers_per_key = Counter(
        len({pid for rid, pid in pids.items() if rid.startswith(f"sticky-{k}-")}) for k in range(40)
    )
    print(
        f"\nsticky: 40 keys x 5 requests, variants {Counter(min(v) for v in variants.values())}, "
        f"workers {Counter(pids.values())}, keys answered by both workers "
        f"{workers_per_key[2]}"
    )
    assert all(len(seen) == 1 for seen in variants.values()), variants
    assert {min(v) for v in variants.values()} == {"v1", "v2"}
    assert len(set(pids.values())) == WORKERS
    assert workers_per_key[2] >= 1  # some key was answered by both workers, the same way


def _client(port: int, stop: threading.Event, outcomes: list[tuple[float, str, str]]) -> None:
    """Single-row predictions back to back: (monotonic start, outcome, version) each."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            reply = predict(port, [IRIS_ROW], timeout=10)
        except Exception as exc:  # a connection error is an outcome to count, not a crash
            outcomes.append((started, type(exc).__name__, ""))
            continue
        outcomes.append((started, str(reply.status), reply.headers.get("x-model-version", "")))


def test_rollback_of_a_canary_under_load_loses_no_request(server: GunicornServer) -> None:
    stop = threading.Event()
    per_client: list[list[tuple[float, str, str]]] = [[] for _ in range(CLIENTS)]
    clients = [
        threading.Thread(target=_client, args=(server.port, stop, outcomes), daemon=True)
        for outcomes in per_client
    ]
    started = time.monotonic()
    for client in clients:
        client.start()
    try:
        time.sleep(1.0)
        routed = admin(server.port, "route", {"weights": {"1": 90, "2": 10}})
        assert routed.status == 200, routed.raw
        converge(server.port, split_between(1, 2, sticky=False), "every worker on the canary")
        split_at = time.monotonic()
        time.sleep(1.5)
        rolled = admin(server.port, "rollback", {})
        assert rolled.status == 200, rolled.raw
        assert rolled.body["version"] == 1 and rolled.body["deployment"]["routes"] == {}
        converge(server.port, serves_only(1), "every worker back on version 1 alone")
        converged_at = time.monotonic()
        time.sleep(max(0.5, started + LOAD_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=15)
    elapsed = time.monotonic() - started
    assert not any(client.is_alive() for client in clients)

    outcomes = [item for items in per_client for item in items]
    statuses = Counter(status for _, status, _ in outcomes)
    during = Counter(v for t, _, v in outcomes if split_at <= t < converged_at)
    after = Counter(v for t, _, v in outcomes if t >= converged_at)
    print(
        f"\nrollback under load: {len(outcomes)} requests from {CLIENTS} clients in "
        f"{elapsed:.1f}s ({len(outcomes) / elapsed:.0f}/s); outcomes {dict(statuses)}; "
        f"versions during the canary {dict(during)}, after every worker rolled back "
        f"{dict(after)}"
    )
    assert statuses == Counter({"200": len(outcomes)})  # no non-2xx, no connection error
    assert during["2"] > 0  # the canary took traffic
    assert set(after) == {"1"} and after["1"] > 0


def test_canary_route_watch_promote(server: GunicornServer) -> None:
    reply = admin(server.port, "route", {"weights": {"1": 90, "2": 10}})
    assert reply.status == 200, reply.raw

    # watch: the model shows the split, every worker applies it, traffic follows the weights
    shown = http_request(server.port, "GET", "/v1/models/iris").body
    assert shown["routes"]["production"]["variants"] == [
        {"version": 1, "weight": 90.0},
        {"version": 2, "weight": 10.0},
    ]
    converge(server.port, split_between(1, 2, sticky=False), "every worker on the 90/10 split")
    served = Counter(predict(server.port, [IRIS_ROW]).body["variant"] for _ in range(300))
    print(f"\ncanary 90/10: {dict(served)} of 300")
    assert set(served) == {"v1", "v2"} and 0.03 <= served["v2"] / 300 <= 0.2
    history = admin(server.port, "history?limit=1", method="GET")
    assert history.status == 200
    (event,) = history.body["events"]
    assert event["action"] == "route" and event["actor"] == "admin-api@127.0.0.1"

    # promote: all traffic to the new version, on every worker
    promoted = admin(server.port, "promote", {"version": 2})
    assert promoted.status == 200 and promoted.body["previous"] == 1
    converge(server.port, serves_only(2), "every worker on version 2 alone")
    for _ in range(50):
        reply = predict(server.port, [IRIS_ROW])
        assert reply.status == 200 and reply.body["version"] == 2 and "variant" not in reply.body
