"""Damage a model's deployment.json in place, on either store backend (as a bad hand edit,
a full disk or a bug in another tool would), bypassing the store's own writers."""

from __future__ import annotations

import boto3

from serving.store.base import DEPLOYMENT, StoreBase
from serving.store.model_store import ModelStore
from serving.store.s3_client import S3Location


def damage_deployment(store: StoreBase, name: str, body: bytes = b'{"aliases": {"produc') -> None:
    if isinstance(store, ModelStore):
        store.deployment_path(name).write_bytes(body)
        return
    where = S3Location.parse(store.location)
    boto3.client("s3").put_object(Bucket=where.bucket, Key=where.key(name, DEPLOYMENT), Body=body)
