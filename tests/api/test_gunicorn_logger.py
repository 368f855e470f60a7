"""gunicorn's access-log atoms are not built per request when no access log is read."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gunicorn.config import Config
from gunicorn.glogging import Logger as GunicornLogger

from serving.api.gunicorn_logger import Logger
from serving.telemetry.logs import logging_config

ROOT = Path(__file__).resolve().parents[2]


def _config(**settings: object) -> Config:
    cfg = Config()
    cfg.set("logconfig_dict", logging_config("INFO"))  # what gunicorn.conf.py sets
    for key, value in settings.items():
        cfg.set(key, value)
    return cfg


def test_gunicorn_conf_uses_the_logger() -> None:
    script = (
        "import json, runpy; c = runpy.run_path('gunicorn.conf.py'); "
        "print(json.dumps([c['logger_class'], c['accesslog']]))"
    )
    done = subprocess.run(  # in a child: gunicorn.conf.py sets up a Prometheus directory
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout.splitlines()[-1]) == ["serving.api.gunicorn_logger.Logger", None]


def test_no_access_log_is_built_under_our_logging_config() -> None:
    assert GunicornLogger(_config()).access_log_enabled  # gunicorn's own: builds every line
    assert not Logger(_config()).access_log_enabled


def test_an_access_logfile_asked_for_still_counts_as_enabled() -> None:
    assert Logger(_config(accesslog="-")).access_log_enabled
