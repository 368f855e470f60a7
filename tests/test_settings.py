"""Settings.from_env: defaults, parsing, and a clear error naming the bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.settings import Settings


def test_defaults_match_the_readme() -> None:
    settings = Settings.from_env({})
    assert settings.model_store == Path("model_store")
    assert settings.poll_interval == 1.0
    assert settings.max_instances == 10_000
    assert settings.max_body_bytes == 8 * 1024 * 1024
    assert (settings.statsd_host, settings.statsd_port, settings.statsd_prefix) == (
        "127.0.0.1",
        8125,
        "serving",
    )
    assert settings.admin_token is None and settings.log_level == "INFO"
    assert settings.allow_version_mismatch is False
    assert settings.allow_pickle is True


def test_values_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SERVING_MODEL_STORE": "/srv/models",
            "SERVING_POLL_INTERVAL": "0.25",
            "SERVING_MAX_INSTANCES": "50",
            "SERVING_STATSD_HOST": "",
            "SERVING_LOG_LEVEL": "debug",
            "SERVING_ALLOW_VERSION_MISMATCH": "yes",
            "SERVING_ADMIN_TOKEN": "s3cret",
            "SERVING_ALLOW_PICKLE": "false",
        }
    )
    assert settings.model_store == Path("/srv/models") and settings.poll_interval == 0.25
    assert settings.max_instances == 50 and settings.statsd_host is None
    assert settings.log_level == "DEBUG" and settings.allow_version_mismatch is True
    assert settings.admin_token == "s3cret" and settings.allow_pickle is False


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SERVING_POLL_INTERVAL", "soon", "not a number"),
        ("SERVING_POLL_INTERVAL", "0", "between"),
        ("SERVING_MAX_INSTANCES", "1.5", "whole number"),
        ("SERVING_MAX_INSTANCES", "0", "at least 1"),
        ("SERVING_MAX_BODY_BYTES", "10", "at least 1024"),
        ("SERVING_STATSD_PORT", "70000", "between 1 and 65535"),
        ("SERVING_LOG_LEVEL", "LOUD", "one of"),
        ("SERVING_ALLOW_VERSION_MISMATCH", "maybe", "true or false"),
    ],
    ids=[
        "interval-text",
        "interval-zero",
        "instances-float",
        "instances-zero",
        "body-tiny",
        "port-range",
        "log-level",
        "flag",
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)
