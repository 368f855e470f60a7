"""One Flask-free predict path for every protocol: route, infer, then telemetry reads the outcome.

A front door (v1, V2, MLflow) decodes its envelope, calls `route` (variant and shadow of an
alias, or a pinned version), decodes the rows against the chosen version, calls `infer`, and
encodes `outcome.result`. The request hooks read the `Outcome`; `shadow_task` binds the shadow's
copy of the request, which the web layer runs after the response is sent.
"""

from serving.dataplane.core import infer, route
from serving.dataplane.outcome import Outcome, Rows
from serving.dataplane.shadow import shadow_task

__all__ = ["Outcome", "Rows", "infer", "route", "shadow_task"]
