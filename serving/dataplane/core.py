"""Route a request (variant and shadow of an alias, or a pinned version), then predict."""

from __future__ import annotations

import logging

from serving.dataplane.outcome import Outcome, Rows
from serving.runtime import deadline
from serving.runtime.deadline import RequestTimeout
from serving.runtime.loader import ModelLoader
from serving.runtime.predict import PredictionResult
from serving.store.model_store import DEFAULT_ALIAS

log = logging.getLogger(__name__)


def route(
    loader: ModelLoader,
    name: str,
    alias: str | None = DEFAULT_ALIAS,
    version: int | None = None,
    key: str | None = None,
) -> Outcome:
    """What serves this request: a pinned `version` (no variant, no shadow), else `alias`
    through its split (sticky by `key`) with its shadow. ModelNotFound / ModelUnavailable.

    Routing comes before decoding: V2 and MLflow decode against the chosen version's schema.
    """
    if version is not None:
        return Outcome(loader.get_version(name, version), None, None, None)
    alias = alias or DEFAULT_ALIAS
    choice = loader.choose(name, alias, key)
    return Outcome(choice.loaded, alias, choice.variant, choice.shadow)


def infer(
    outcome: Outcome,
    rows: Rows,
    return_proba: bool = False,
    max_instances: int | None = None,
    timeout: float | None = None,
    return_scores: bool = False,
) -> PredictionResult:
    """Predict `rows` with the routed version; the outcome keeps the rows and the result.

    Raises the runtime's InvalidInput (422) for rows the version cannot take, and
    RequestTimeout (504) past `timeout` seconds; the outcome then has no result, and is counted
    as a failed request of its version.
    """
    outcome.rows = rows
    armed = deadline.arm(timeout)  # two setitimer calls per prediction, no context manager
    try:
        result = rows.predict(outcome.served, return_proba, max_instances, return_scores)
    except RequestTimeout:
        served = outcome.served
        log.warning(
            "prediction of %s v%s stopped after %s s (SERVING_REQUEST_TIMEOUT)",
            served.name, served.version, timeout,
            extra={"model": served.name, "version": served.version, "event": "request_timeout"},
        )  # fmt: skip
        raise
    finally:
        if armed:
            deadline.disarm()
    outcome.result = result
    return result
