"""These tests run on both store backends: a local directory and S3 (a real SeaweedFS)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["local", "s3"])
def store_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
