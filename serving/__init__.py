"""serving: a production server for scikit-learn models (Flask + gunicorn)."""

from serving.app import create_app

__all__ = ["create_app"]
