"""serving: a production server for scikit-learn models (Flask + gunicorn)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m serving models promote` does not import Flask and scikit-learn.
    if name == "create_app":
        from serving.app import create_app

        return create_app
    raise AttributeError(name)
