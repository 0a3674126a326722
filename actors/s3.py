"""Where S3 requests go, the standard AWS way, for every S3 client of the project (pyarrow and boto3).

The endpoint is ``storage.endpoint_url`` when the config sets it, else ``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL`` (the AWS SDKs' service-specific and global variables), else AWS itself. The region
is ``storage.region``, else ``AWS_REGION``, else ``AWS_DEFAULT_REGION``. A process that was handed the
config's settings (the driver, each stage actor, each trainer worker) exports them with
:func:`export_settings`, so that code which sees only the environment (the model fetch of
``actors.model_source``) sends its requests to the same place.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def endpoint_url(configured: str | None = None) -> str | None:
    """The S3 endpoint to use: the configured one, else the environment's, else None (AWS)."""
    return configured or _first_env(ENDPOINT_ENV)


def region(configured: str | None = None) -> str | None:
    return configured or _first_env(REGION_ENV)


def endpoint_parts(url: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` of an endpoint URL; a bare ``host[:port]`` means https."""
    parsed = urlparse(url if "://" in url else f"https://{url}")
    return parsed.scheme, parsed.netloc


def settings_env(configured_endpoint: str | None, configured_region: str | None) -> dict[str, str]:
    """The environment variables that carry the config's S3 settings (only those it sets)."""
    env = {}
    if configured_endpoint:
        env["AWS_ENDPOINT_URL_S3"] = configured_endpoint
    if configured_region:
        env["AWS_REGION"] = configured_region
    return env


def export_settings(env: dict[str, str] | None) -> None:
    """Make this process's S3 clients use the config's settings (``settings_env``): they win over
    whatever the pod's environment says, as ``storage.endpoint_url`` does everywhere else."""
    os.environ.update(env or {})


def boto3_client(configured_endpoint: str | None = None, configured_region: str | None = None,
                 max_attempts: int = 5, connect_timeout_s: float = 5.0, read_timeout_s: float = 30.0):
    """A boto3 S3 client with the resolved endpoint and region (the configured ones win over the
    environment's) and the SDK's standard retries: what pyarrow's filesystem cannot do goes here."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url(configured_endpoint)
    if endpoint and "://" not in endpoint:
        endpoint = f"https://{endpoint}"  # a bare host[:port] means https, as for pyarrow
    return boto3.client("s3", endpoint_url=endpoint, region_name=region(configured_region),
                        config=Config(retries={"max_attempts": max_attempts, "mode": "standard"},
                                      connect_timeout=connect_timeout_s, read_timeout=read_timeout_s))


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` → ``("bucket", "key/prefix")`` (no trailing slash)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key.strip("/")
