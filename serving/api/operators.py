"""Who an answer may name: operator identities (`created_by`, `actor`: user@host) are shown
to the admin only, once an admin token is set; without one there is no admin to tell apart."""

from __future__ import annotations

import hmac
from typing import Any

from flask import request

from serving.api.state import get_state

OPERATOR_FIELDS = ("created_by", "actor")


def shows_operators() -> bool:
    """True without an admin token, or when this request carries it as a bearer token."""
    expected = get_state().settings.admin_token
    if not expected:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return (
        scheme.lower() == "bearer"
        and bool(token)
        and hmac.compare_digest(token.encode(), expected.encode())
    )


def without_operators(doc: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in doc.items() if key not in OPERATOR_FIELDS}
