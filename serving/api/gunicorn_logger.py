"""gunicorn's logger, minus the access-log line nobody reads.

With `logconfig_dict` set (gunicorn.conf.py: the same JSON logging as the app), gunicorn counts
its access log as enabled and, after every response, builds the line's atoms (a dict of some
twenty strings from the request and response: 3-4 % of a worker's time under load, py-spy)
before the `gunicorn.access` logger, at CRITICAL with no handler, drops it. The app writes its
own line per request instead (serving.api.hooks). Here the access log counts as enabled only if
that logger would take an INFO record: `GUNICORN_CMD_ARGS=--access-logfile -` still works.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger as _GunicornLogger


class Logger(_GunicornLogger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)  # applies logconfig_dict, which sets gunicorn.access's level
        self._access_log_enabled = bool(cfg.accesslog) or (
            self._access_log_enabled and self.access_log.isEnabledFor(logging.INFO)
        )
