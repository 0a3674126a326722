"""A diffusers directory on S3, as a cluster without hub access keeps its base model: the tiny
preset written with ``save_pretrained`` and uploaded object by object."""

from __future__ import annotations

from pathlib import Path


def upload_tiny_model(client, bucket: str, prefix: str, local: Path, family: str = "cogvideox-t2v") -> str:
    """Save ``family``'s tiny preset to ``local`` and upload it to ``s3://bucket/prefix``; that URI."""
    from actors.model_config import ModelConfig
    from actors.models import build_pipeline

    build_pipeline(ModelConfig(family=family)).save_pretrained(local)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")
    return f"s3://{bucket}/{prefix}"
