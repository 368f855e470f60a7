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
    loader = get_state().loader
    ok, waiting = loader.ready()
    if ok:  # still ready on a fallback: it answers; says so, as workers may differ
        fallback = loader.fallbacks()
        return json_response({"status": "ready", **({"fallback": fallback} if fallback else {})})
    return json_response({"status": "not_ready", "waiting": waiting}, 503)
