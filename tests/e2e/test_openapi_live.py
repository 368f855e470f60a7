"""schemathesis against the live OpenAPI document of a real gunicorn server.

Fixed seed (derandomized), a bounded number of examples per operation: no 5xx anywhere, and
every response matches the status codes, content types and schemas the document declares.
`positive_data_acceptance` is left out: a body can match the generic schema (any array of rows)
and still be refused, rightly, by the model's own schema (feature count, names, kinds).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from serving.telemetry.logs import FLUSH_EVERY
from tests.e2e.conftest import GunicornServer, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
EXAMPLES = 25


def _dead_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_every_operation_conforms_to_the_live_spec(
    copy_store: Callable[[], Path], start_server: Callable[..., GunicornServer]
) -> None:
    # As `make run` deploys: the demo's two models, no SERVING_DEFAULT_MODEL (so /invocations
    # answers its documented 404 and /ping follows readiness).
    env = server_env(copy_store(), _dead_udp_port(), workers=1)
    server = start_server(env)
    base = f"http://127.0.0.1:{server.port}"
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    with requests.Session() as session:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                case.call_and_validate(
                    base_url=base, session=session, excluded_checks=[positive_data_acceptance]
                )

            check()
    time.sleep(FLUSH_EVERY * 3)  # the last request lines are written
    statuses = [record.get("status") for record in server.records()]
    assert statuses and 500 not in statuses
