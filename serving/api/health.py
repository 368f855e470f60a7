"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, Response

from serving.api.drain import draining
from serving.api.jsonio import json_response
from serving.api.openapi import doc
from serving.api.schemas import HealthSchema
from serving.api.state import get_state

bp = Blueprint("health", __name__, url_prefix="/health")


@bp.get("/live")
@doc("Liveness: the process is up", "health", {200: HealthSchema})
def live() -> Response:
    return json_response({"status": "alive"})


@bp.get("/ready")
@doc(
    "Readiness: every deployed model has a loaded version and the server is not draining",
    "health",
    {200: HealthSchema, 503: HealthSchema},
)
def ready() -> Response:
    if draining():  # SIGTERM received: load balancers must stop sending (serving.api.drain)
        return json_response({"status": "not_ready", "reason": "draining"}, 503)
    ok, waiting = get_state().loader.ready()
    if ok:
        return json_response({"status": "ready"})
    return json_response({"status": "not_ready", "waiting": waiting}, 503)
