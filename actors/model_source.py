"""Where a base model's files come from, checked on the driver before any actor loads them.

``model.pretrained`` is ``"tiny"`` (built in code), a local diffusers directory, a Hugging Face
model id, or ``s3://bucket/prefix`` of a diffusers directory (``save_pretrained``'s layout). A mistake
there used to surface as an actor dying in its constructor; here it is one line naming
``model.pretrained``. Only small ``config.json`` files are read (from the directory, the Hugging Face
cache, the hub when online, or the bucket), never weights.

An ``s3://`` model is fetched once per node (:func:`local_model`, the one place every loader's
config passes through first) into a cache the node's actors and trainer workers share.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from actors import s3
from actors.errors import InputError
from actors.families import get_family
from actors.model_config import RANDOM_FULL_SIZE, ModelConfig, SamplingConfig, SamplingShape, check_sampling


def looks_local(source: str) -> bool:
    """Whether a model source (``model.pretrained``, ``scoring.weights``) is a local path rather than a
    Hugging Face model id: it starts like a path or exists."""
    return source.startswith(("/", ".", "~")) or os.path.exists(source)


log = logging.getLogger(__name__)

# Where s3:// models are cached on a node: a folder every process of the node can write (the pods'
# cache volume on a cluster: cluster/README.md).
MODEL_CACHE_ENV = "VIDEOGPA_MODEL_CACHE"
_FETCHED = ".videogpa-fetched.json"  # in a complete cached copy: the object listing it was made from


def _is_s3(source: str) -> bool:
    return source.startswith("s3://")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_model_source(model: ModelConfig) -> None:
    """The model's files are where ``model.pretrained`` says, or one InputError naming it."""
    source = model.pretrained
    if source in ("tiny", RANDOM_FULL_SIZE):
        return
    if _is_s3(source):
        _s3_read(source, "model_index.json", missing="holds no diffusers model (no model_index.json)")
        return
    if looks_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise InputError(f"model.pretrained: directory {source!r} does not exist")
        if not (path / "model_index.json").is_file():
            raise InputError(f"model.pretrained: {source!r} holds no diffusers model (no model_index.json)")
        return
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise InputError(f"model.pretrained: {source!r} is neither an existing directory nor a Hugging Face "
                         "model id (owner/name)") from None
    if "/" not in source:
        raise InputError(f"model.pretrained: {source!r} is not a Hugging Face model id (owner/name) "
                         "nor an existing directory")
    if _offline() and not isinstance(try_to_load_from_cache(source, "model_index.json", revision=model.revision), str):
        raise InputError(f"model.pretrained: {source!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                         f"and HF_HUB_OFFLINE is set; download it first: huggingface-cli download {source}")


def _component_config(model: ModelConfig, component: str) -> dict[str, Any]:
    """``<component>/config.json`` of a real model (check_model_source first)."""
    if _is_s3(model.pretrained):
        data = _s3_read(model.pretrained, f"{component}/config.json", missing=f"has no {component}/config.json")
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            raise InputError(f"model.pretrained: {component}/config.json of {model.pretrained!r} is not JSON") from None
    if looks_local(model.pretrained):
        path = Path(model.pretrained).expanduser() / component / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model.pretrained, f"{component}/config.json", revision=model.revision))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"model.pretrained: cannot read {component}/config.json of {model.pretrained!r} "
                         f"({type(err).__name__})") from None


def model_sampling_shape(model: ModelConfig) -> SamplingShape:
    """The sizes ``model`` can sample, from its configs alone (no weights loaded)."""
    family = get_family(model.family)
    if model.pretrained == RANDOM_FULL_SIZE:
        vae, transformer = family.full_size_config("vae"), family.full_size_config("transformer")
    elif model.pretrained == "tiny":
        vae, transformer = family.tiny_component_configs()
    else:
        vae, transformer = _component_config(model, "vae"), _component_config(model, "transformer")
    return family.sampling_shape(vae, transformer)


def check_model(model: ModelConfig, sampling: SamplingConfig) -> None:
    """The driver's check of the model section: its files exist and it can sample ``sampling``."""
    check_model_source(model)
    check_sampling(model_sampling_shape(model), model, sampling)


# --------------------------------------------------------------------------------------------
# Models on S3
# --------------------------------------------------------------------------------------------


def _s3_error(uri: str, err: Exception) -> InputError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            cause = "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
        elif code == "NoSuchBucket":
            cause = "the bucket does not exist"
        else:
            cause = f"{code}: {' '.join(str(err).split())[:160]}"
    elif isinstance(err, EndpointConnectionError):
        cause = "S3 endpoint unreachable: check AWS_ENDPOINT_URL (or storage.endpoint_url)"
    elif isinstance(err, NoCredentialsError):
        cause = "no AWS credentials in the environment (AWS_ACCESS_KEY_ID is not set)"
    else:
        cause = f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"
    return InputError(f"storage error at {uri} (model.pretrained): {cause}")


def _s3_read(source: str, rel: str, missing: str) -> bytes:
    """One small object of an s3:// model directory; ``missing``: what its absence means."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = s3.split_uri(source)
    key = f"{prefix}/{rel}" if prefix else rel
    try:
        return s3.boto3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise InputError(f"model.pretrained: {source!r} {missing}") from None
        raise _s3_error(f"s3://{bucket}/{key}", err) from None
    except BotoCoreError as err:
        raise _s3_error(f"s3://{bucket}/{key}", err) from None


def model_cache_root() -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "videogpa" / "models").expanduser()


def local_model(model: ModelConfig) -> ModelConfig:
    """``model`` with an ``s3://`` pretrained replaced by its local copy on this node (fetched the
    first time); any other source unchanged. Every loader of a base model calls this first."""
    if not _is_s3(model.pretrained):
        return model
    return model.model_copy(update={"pretrained": str(fetch_s3_model(model.pretrained))})


def fetch_s3_model(source: str) -> Path:
    """The local copy of the diffusers directory at ``source`` (``s3://bucket/prefix``).

    The copy's folder is named after the objects' keys, sizes and ETags, so a changed model is a new
    folder, never a mix. The first process of a node to need it downloads under a file lock while the
    others wait; a fetch that was interrupted resumes from the bytes already on disk; each file is
    checked against its size (and its MD5 where the ETag is one) before the whole folder is renamed
    into place, so a folder that exists is complete.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = s3.split_uri(source)
    client = s3.boto3_client()
    try:
        objects = _listing(client, bucket, prefix)
    except (ClientError, BotoCoreError) as err:
        raise _s3_error(source, err) from None
    if "model_index.json" not in objects:
        raise InputError(f"model.pretrained: {source!r} holds no diffusers model (no model_index.json)")
    digest = hashlib.sha256(json.dumps([source, sorted(objects.items())]).encode()).hexdigest()[:16]
    root = model_cache_root()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{bucket}-{prefix.rsplit('/', 1)[-1]}")
    final = root / f"{name}-{digest}"
    if (final / _FETCHED).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{final.name}.lock"):
        if (final / _FETCHED).is_file():  # another process of this node fetched it while we waited
            return final
        partial = root / f"{final.name}.partial"
        log.info("fetching model %s (%d files, %.1f MiB) into %s", source, len(objects),
                 sum(size for size, _ in objects.values()) / 2**20, final)
        for rel, (size, etag) in sorted(objects.items()):
            try:
                _fetch_file(client, bucket, f"{prefix}/{rel}" if prefix else rel, partial / rel, size, etag)
            except (ClientError, BotoCoreError) as err:
                raise _s3_error(f"{source}/{rel}", err) from None
        (partial / _FETCHED).write_text(json.dumps({"source": source, "objects": objects}, sort_keys=True))
        os.replace(partial, final)
    return final


def _listing(client, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    """Relative path → (size, ETag) of every object under ``prefix/``."""
    objects = {}
    start = f"{prefix}/" if prefix else ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
        for item in page.get("Contents", []):
            rel = item["Key"][len(start):]
            if rel and not rel.endswith("/"):
                objects[rel] = (int(item["Size"]), item["ETag"].strip('"'))
    return objects


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_FETCH_ATTEMPTS = 5  # each resumes where the previous one's stream broke off


def _fetch_file(client, bucket: str, key: str, dest: Path, size: int, etag: str) -> None:
    """``dest`` holds the object's bytes, checked; resumes a ``.part`` of the same ETag."""
    from botocore.exceptions import BotoCoreError

    if dest.is_file() and dest.stat().st_size == size:  # checked before it got its name
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part-{hashlib.sha1(etag.encode()).hexdigest()[:12]}")
    for attempt in range(1, _FETCH_ATTEMPTS + 1):
        have = part.stat().st_size if part.exists() else 0
        if have >= size:
            break
        try:
            # IfMatch: a resumed download never splices two versions of the object
            extra = {"Range": f"bytes={have}-"} if have else {}
            body = client.get_object(Bucket=bucket, Key=key, IfMatch=etag, **extra)["Body"]
            with open(part, "ab") as out:
                for chunk in body.iter_chunks(8 << 20):
                    out.write(chunk)
        except (BotoCoreError, ConnectionError) as err:
            if attempt == _FETCH_ATTEMPTS:
                raise
            log.warning("fetching s3://%s/%s broke off at %d bytes (%s); resuming", bucket, key,
                        part.stat().st_size if part.exists() else 0, type(err).__name__)
    got = part.stat().st_size if part.exists() else 0
    if got != size or (re.fullmatch(r"[0-9a-f]{32}", etag) and _md5(part) != etag):
        part.unlink(missing_ok=True)  # a bad copy is not resumed next time
        raise InputError(f"model.pretrained: s3://{bucket}/{key} arrived as {got} of {size} bytes or with another "
                         "checksum than its ETag; run again to fetch it afresh")
    os.replace(part, dest)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

