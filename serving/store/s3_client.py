"""Talking to an S3-compatible object store with boto3: the location, the client, the errors.

Endpoint and credentials come the AWS way (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_PROFILE`), so AWS S3, MinIO, SeaweedFS, Ceph, R2
and GCS's S3 API all work. Timeouts are short and retries few: a poll must not hang a worker's
poller thread, and an outage is the loader's business (it backs off), not boto3's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

from serving.errors import StoreError, StoreUnavailable

_BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


@dataclasses.dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or "some/prefix/" (always ending in a slash)

    @classmethod
    def parse(cls, url: str) -> S3Location:
        rest = url[len("s3://") :] if url.startswith("s3://") else ""
        bucket, _, prefix = rest.partition("/")
        if not (3 <= len(bucket) <= 63) or not set(bucket) <= _BUCKET_CHARS:
            raise StoreError(f"bad store URL {url!r}: use s3://BUCKET/PREFIX")
        prefix = prefix.strip("/")
        return cls(bucket, f"{prefix}/" if prefix else "")

    def key(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def make_client(connect_timeout: float = 2.0, read_timeout: float = 20.0) -> Any:
    """A boto3 S3 client from the environment (never shared across a fork: make one after)."""
    import boto3
    from botocore.config import Config

    # Path-style URLs for a custom endpoint (MinIO, SeaweedFS, Ceph: no wildcard DNS per
    # bucket); AWS itself gets boto3's default (virtual-hosted).
    custom = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if custom else {},
        user_agent_extra="serving",
    )
    return boto3.session.Session().client("s3", config=config)


def error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")


def http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None) or {}
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def is_missing(exc: BaseException) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound") or http_status(exc) == 404


def is_precondition_failed(exc: BaseException) -> bool:
    return http_status(exc) == 412 or error_code(exc) in ("PreconditionFailed", "412")


def is_not_modified(exc: BaseException) -> bool:
    return http_status(exc) == 304 or error_code(exc) == "304"


@contextlib.contextmanager
def translated(location: S3Location, what: str) -> Iterator[None]:
    """boto3's failures as StoreUnavailable (unreachable, 5xx, throttled) or StoreError."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise StoreError(
            f"object store {location}: no credentials (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
        ) from None
    except (S3UploadFailedError, S3TransferFailedError) as exc:  # boto3's transfer manager
        raise StoreUnavailable(f"object store {location.bucket}: {what}: {exc}") from None
    except ClientError as exc:
        status = http_status(exc)
        if status >= 500 or status in (0, 429) or error_code(exc) in ("SlowDown", "Throttling"):
            raise StoreUnavailable(f"object store {location.bucket}: {what}: {exc}") from None
        if error_code(exc) == "NoSuchBucket":
            raise StoreError(f"object store: bucket {location.bucket!r} does not exist") from None
        if status in (401, 403):
            raise StoreError(f"object store {location}: access denied to {what}") from None
        raise StoreError(f"object store {location}: {what}: {exc}") from None
    except BotoCoreError as exc:  # connection refused, timeouts, no credentials
        raise StoreUnavailable(f"object store {location.bucket} unreachable: {exc}") from None
