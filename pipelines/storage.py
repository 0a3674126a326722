"""Run storage on a local path or ``s3://bucket/prefix`` through one pyarrow filesystem.

Every write is all-or-nothing: local files go to a temporary name and are renamed; an S3
object appears only when its single PUT completes. Readers trust only what a marker or the
round manifest lists, so a half-written stage is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from actors import s3
from actors.errors import InputError, StorageFailure

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
        # Called before every write and delete (pipelines.lease: raises once this command lost the run's lease).
        self.fence: Callable[[], None] | None = None

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
        self._check_fence()
        write_bytes_atomic(self.fs, self.path(rel), data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``rel`` only where nothing is there yet, atomically: of two callers racing for the
        same path exactly one gets True. Not fenced (the lease itself is written with it)."""
        return create_exclusive(self.spec, self.fs, self.path(rel), data)

    def _check_fence(self) -> None:
        if self.fence is not None:
            self.fence()

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True).encode("utf-8"))

    def delete_file(self, rel: str) -> None:
        self._check_fence()
        if self.exists(rel):
            try:
                self.fs.delete_file(self.path(rel))
            except OSError as err:
                raise storage_error(self.uri(rel), err) from None

    def delete_dir(self, rel: str) -> None:
        """Remove a stage's unfinished output before it is redone."""
        self._check_fence()
        if self.exists(rel):
            log.info("removing unfinished output %s", self.uri(rel))
            try:
                self.fs.delete_dir(self.path(rel))
            except OSError as err:
                raise storage_error(self.uri(rel), err) from None

    def sha256(self, rel: str) -> str:
        return hashlib.sha256(self.read_bytes(rel)).hexdigest()


# The AWS SDK writes an error response's body into the caller's preallocated read buffer; when
# the body (a few hundred bytes of S3 error XML) is larger than a small object, the stream turns
# bad and a transient 500/503 surfaces as a non-retryable INTERNAL_FAILURE ("Failed to flush
# response stream"). The SDK's own retry strategy skips it, so reads retry it here.
_MISCLASSIFIED_TRANSIENT = ("Failed to flush response stream", "AWS Error INTERNAL_FAILURE")


def read_bytes(fs: pafs.FileSystem, path: str, attempts: int = 5, missing_ok: bool = False) -> bytes | None:
    """The file's bytes; a missing file is an InputError naming it (None with ``missing_ok``)."""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            with fs.open_input_stream(path) as stream:
                return stream.read()
        except FileNotFoundError:
            if missing_ok:
                return None
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
            try:
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except OSError:
                with contextlib.suppress(OSError):  # a full disk keeps no torn temporary file
                    os.unlink(tmp)
                raise
        else:
            with fs.open_output_stream(path) as out:  # one PUT: the object appears only when complete
                out.write(data)
    except OSError as err:
        raise storage_error(path, err) from None


def create_exclusive(spec: StorageSpec, fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """``data`` at ``path`` unless something is there already (then False), in one atomic step:
    locally a hard link of a complete temporary file (link(2) fails where the name exists); on S3 a
    conditional PUT (``If-None-Match: *``, honoured by S3, MinIO and moto), which pyarrow cannot send."""
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            parent = path.rsplit("/", 1)[0]
            os.makedirs(parent, exist_ok=True)
            tmp = f"{path}{TEMP_MARK}{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        bucket, key = path.split("/", 1)
        try:
            s3_client(spec).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except Exception as err:  # botocore's ClientError and its connection errors
            status = getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status in (409, 412):  # 412: the object exists; 409: a concurrent conditional write won
                return False
            raise OSError(f"When writing key '{key}' in bucket '{bucket}': AWS Error {_aws_code(err)}: "
                          f"{' '.join(str(err).split())[:300]}") from None
        return True
    except OSError as err:
        raise storage_error(path if not spec.is_s3 else f"s3://{path}", err) from None


def _aws_code(err: Exception) -> str:
    code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
    return {"AccessDenied": "ACCESS_DENIED", "NoSuchBucket": "NO_SUCH_BUCKET"}.get(code, code or type(err).__name__)


def s3_client(spec: StorageSpec) -> Any:
    """A boto3 S3 client for what pyarrow's filesystem cannot do, configured as that filesystem is."""
    return s3.boto3_client(spec.endpoint_url, spec.region, spec.max_attempts, spec.connect_timeout_s,
                           spec.request_timeout_s)


# How storage failures read, wherever they come from: an OSError's errno, pyarrow's and the AWS SDK's
# texts (also as Ray forwards them from an actor or worker, as text only).
_NO_SPACE = ("No space left on device", "Disk quota exceeded")
_NO_PERMISSION = ("Permission denied", "Read-only file system", "Operation not permitted")
_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "The specified bucket does not exist")
_EXPIRED = ("ExpiredToken", "EXPIRED_TOKEN", "RequestExpired", "TokenRefreshRequired", "token has expired",
            "security token included in the request is expired")
STORAGE_FAILURE_TEXTS = _NO_SPACE + _NO_PERMISSION + _NO_BUCKET + _EXPIRED


def storage_error(where: str, err: OSError) -> InputError | StorageFailure:
    """The one-line error of a storage failure at ``where`` (a path or URI), naming its likely cause:
    an :class:`InputError` where the config must change (exit 2), a :class:`StorageFailure` where the
    same command can resume once the storage is fixed (exit 1)."""
    if isinstance(err, (InputError, StorageFailure)):
        return err
    text = " ".join(str(err).split())
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or any(s in text for s in _NO_SPACE):
        return StorageFailure(f"storage error at {where}: no space left on device; free some and run the same "
                              "command again (it resumes)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS) or any(s in text for s in _NO_PERMISSION):
        kind = "read-only file system" if code == errno.EROFS or "Read-only" in text else "permission denied"
        return InputError(f"storage error at {where}: {kind}; output_uri must be writable by this user")
    if any(s in text for s in _NO_BUCKET):
        bucket = re.search(r"bucket '([^']+)'", text)
        named = f"bucket {bucket.group(1)!r}" if bucket else "the bucket"
        return InputError(f"storage error at {where}: {named} does not exist; create it or fix output_uri")
    if any(s in text for s in _EXPIRED):
        return StorageFailure(f"storage error at {where}: S3 credentials expired; renew them (e.g. "
                              "AWS_SESSION_TOKEN) and run the same command again (it resumes)")
    if "AWS Error ACCESS_DENIED" in text or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        cause = "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    elif any(s in text for s in ("NETWORK_CONNECTION", "Connection refused", "curlCode",
                                 "Could not connect to the endpoint")):  # pyarrow's, then boto3's
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
