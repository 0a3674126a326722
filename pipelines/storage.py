"""Run storage on a local path or ``s3://bucket/prefix`` through one pyarrow filesystem.

Every write is all-or-nothing: local files go to a temporary name and are renamed; an S3
object appears only when its single PUT completes. Readers trust only what a marker or the
round manifest lists, so a half-written stage is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from actors import s3
from actors.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StorageSpec:
    """What a process needs to reach the run's storage; credentials are read from its environment."""

    uri: str
    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = 5
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")


def make_filesystem(spec: StorageSpec) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the root path inside it for ``spec.uri``."""
    if spec.is_s3:
        root = spec.uri[len("s3://"):].strip("/")
        if not root or root.startswith("/"):
            raise InputError(f"output_uri {spec.uri!r}: expected s3://bucket/prefix")
        # The config's endpoint and region, else the standard AWS variables (actors.s3).
        kwargs: dict[str, Any] = dict(
            region=s3.region(spec.region),
            connect_timeout=spec.connect_timeout_s,
            request_timeout=spec.request_timeout_s,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=spec.max_attempts),
        )
        endpoint = s3.endpoint_url(spec.endpoint_url)
        if endpoint:
            scheme, host = s3.endpoint_parts(endpoint)
            kwargs.update(endpoint_override=host, scheme=scheme)
        return pafs.S3FileSystem(**kwargs), root
    if "://" in spec.uri and not spec.uri.startswith("file://"):
        raise InputError(f"output_uri {spec.uri!r}: only local paths and s3:// are supported")
    local = spec.uri[len("file://"):] if spec.uri.startswith("file://") else spec.uri
    return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())


class RunStore:
    """Files of one run (``<output_uri>/<run_name>``), addressed by paths relative to it."""

    def __init__(self, spec: StorageSpec, run_name: str):
        self.spec, self.run_name = spec, run_name
        # The run-relative path of the config the current command runs under (pipelines.provenance).
        self.config_rel = "config.yaml"
        self.fs, root = make_filesystem(spec)
        self.root = f"{root}/{run_name}"

    # -- paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The filesystem path (no scheme) of a run-relative path: what pyarrow and Ray take."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def uri(self, *parts: str) -> str:
        """The user-facing URI of a run-relative path."""
        return ("s3://" if self.spec.is_s3 else "") + self.path(*parts)

    # -- reading ---------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def _info(self, rel: str) -> pafs.FileInfo:
        try:
            return self.fs.get_file_info(self.path(rel))
        except OSError as err:
            raise storage_error(self.uri(rel), err) from None

    def read_bytes(self, rel: str) -> bytes:
        return read_bytes(self.fs, self.path(rel), attempts=self.spec.max_attempts)

    def read_json(self, rel: str) -> Any | None:
        """The parsed JSON at ``rel``, or None when it does not exist."""
        if not self.exists(rel):
            return None
        return json.loads(self.read_bytes(rel).decode("utf-8"))

    def list_files(self, rel: str, suffix: str = "") -> list[str]:
        """Run-relative paths of the files directly under ``rel`` ending in ``suffix``, sorted."""
        return self._list(rel, pafs.FileType.File, suffix)

    def list_dirs(self, rel: str) -> list[str]:
        """Run-relative paths of the folders directly under ``rel`` ("" is the run itself), sorted."""
        return self._list(rel, pafs.FileType.Directory, "")

    def _list(self, rel: str, kind: pafs.FileType, suffix: str) -> list[str]:
        if not self.exists(rel):
            return []
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=False))
        except OSError as err:
            raise storage_error(self.uri(rel), err) from None
        prefix = self.root + "/"
        return sorted(i.path[len(prefix):] for i in infos if i.type == kind and i.path.endswith(suffix))

    # -- writing ---------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        write_bytes_atomic(self.fs, self.path(rel), data)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))

    def delete_file(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_file(self.path(rel))

    def delete_dir(self, rel: str) -> None:
        """Remove a stage's unfinished output before it is redone."""
        if self.exists(rel):
            log.info("removing unfinished output %s", self.uri(rel))
            self.fs.delete_dir(self.path(rel))

    def sha256(self, rel: str) -> str:
        return hashlib.sha256(self.read_bytes(rel)).hexdigest()


# The AWS SDK writes an error response's body into the caller's preallocated read buffer; when
# the body (a few hundred bytes of S3 error XML) is larger than a small object, the stream turns
# bad and a transient 500/503 surfaces as a non-retryable INTERNAL_FAILURE ("Failed to flush
# response stream"). The SDK's own retry strategy skips it, so reads retry it here.
_MISCLASSIFIED_TRANSIENT = ("Failed to flush response stream", "AWS Error INTERNAL_FAILURE")


def read_bytes(fs: pafs.FileSystem, path: str, attempts: int = 5) -> bytes:
    for attempt in range(1, max(1, attempts) + 1):
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            raise InputError(f"{path}: file not found") from None
        except OSError as err:
            if attempt < attempts and any(s in str(err) for s in _MISCLASSIFIED_TRANSIENT):
                log.warning("transient storage error reading %s (attempt %d/%d): %s", path, attempt, attempts,
                            " ".join(str(err).split())[:200])
                time.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
                continue
            raise storage_error(path, err) from None
    raise AssertionError("unreachable")


TEMP_MARK = ".tmp-"  # in the names of local files being written (renamed into place when complete)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write so that a reader sees either the old file or the whole new one, never a torn one."""
    parent = path.rsplit("/", 1)[0]
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(parent, exist_ok=True)
            tmp = f"{path}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path) as out:  # one PUT: the object appears only when complete
                out.write(data)
    except OSError as err:
        raise storage_error(path, err) from None


def storage_error(where: str, err: OSError) -> InputError:
    """The one-line error of a storage failure at ``where`` (a path or URI), naming its likely cause."""
    text = " ".join(str(err).split())
    if "AWS Error ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        cause = "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    elif "NETWORK_CONNECTION" in text or "Connection refused" in text or "curlCode" in text:
        cause = "S3 endpoint unreachable: check storage.endpoint_url (or AWS_ENDPOINT_URL)"
    elif any(s in text for s in ("SLOW_DOWN", "SERVICE_UNAVAILABLE", "INTERNAL_FAILURE", "(HTTP status 5")):
        detail = text[max(text.find("AWS Error"), 0):][:160]
        cause = f"S3 kept failing after every retry (storage.max_attempts): {detail}"
    else:
        cause = text[:200]
    if "AWS Error" in text and "unreachable" not in cause and not any(os.environ.get(v) for v in _CREDENTIAL_ENV):
        cause += "; no AWS credentials in the environment (AWS_ACCESS_KEY_ID is not set)"
    return InputError(f"storage error at {where}: {cause}")


# Where the AWS SDK finds credentials besides an instance role: their absence is worth a hint.
_CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
