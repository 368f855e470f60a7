"""marshmallow schemas for request envelopes. Values inside `instances` are checked by numpy."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields


class StrictBoolean(fields.Field):
    """true or false, nothing else (marshmallow's Boolean also takes 1, "yes", "on"...)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if type(value) is not bool:
            raise ValidationError("Must be true or false.")
        return value


class Instances(fields.Field):
    """A non-empty JSON array; the rows themselves are validated against the model's schema."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[Any]:
        if type(value) is not list:
            raise ValidationError("Must be a list of instances (rows or objects).")
        if not value:
            raise ValidationError("Must hold at least one instance.")
        return value


class PredictRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    instances = Instances(required=True)
    return_proba = StrictBoolean(load_default=False)
