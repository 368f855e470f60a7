"""The one error a version that cannot serve raises while it loads."""

from __future__ import annotations


class ModelLoadError(Exception):
    """A version cannot serve; `reason` is one line for logs, `models show` and the API."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
