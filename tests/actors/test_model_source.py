"""A base model on S3 (model.pretrained: s3://…): checked, fetched once per node, resumed, verified."""

from __future__ import annotations

import hashlib
import threading

import boto3
import pytest
import torch

from actors.errors import InputError
from actors.model_config import ModelConfig, SamplingConfig
from actors.model_source import check_model, fetch_s3_model, local_model
from actors.models import build_denoiser, build_pipeline
from tests.support.s3_model import upload_tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def s3_env(s3_server, s3_bucket, tmp_path, monkeypatch):
    """AWS_ENDPOINT_URL alone says where the bucket is; the model cache is a fresh folder."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("VIDEOGPA_MODEL_CACHE", str(tmp_path / "cache"))
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1"), s3_bucket


def test_s3_model_is_checked_fetched_once_and_loads(s3_env, tmp_path, caplog):
    client, bucket = s3_env
    uri = upload_tiny_model(client, bucket, "models/tiny-cogvideox", tmp_path / "saved")
    model = ModelConfig(family="cogvideox-t2v", pretrained=uri)
    check_model(model, SamplingConfig(num_frames=9, height=64, width=64, num_inference_steps=2))
    # Three processes of a node at once (threads with their own lock handles): one download.
    caplog.set_level("INFO", logger="actors.model_source")
    results = []
    threads = [threading.Thread(target=lambda: results.append(fetch_s3_model(uri))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len([r for r in caplog.records if "fetching model" in r.message]) == 1
    local = results[0]
    assert sorted(p.name for p in local.parent.iterdir() if p.is_dir()) == [local.name]  # no .partial left
    in_code = ModelConfig(family="cogvideox-t2v")
    assert local_model(model).pretrained == str(local) and local_model(in_code) is in_code
    # Every loader goes through the copy: the weights are the saved ones.
    tiny = build_pipeline(in_code)
    for built in (build_pipeline(model).transformer, build_denoiser(model)[0]):
        for (name, a), b in zip(built.state_dict().items(), tiny.transformer.state_dict().values()):
            assert torch.equal(a, b), name
    # A changed object is a new copy, never a mix with the old one.
    client.put_object(Bucket=bucket, Key="models/tiny-cogvideox/scheduler/scheduler_config.json",
                      Body=(local / "scheduler/scheduler_config.json").read_bytes() + b"\n")
    assert fetch_s3_model(uri) != local


def test_interrupted_fetch_resumes_and_a_bad_copy_is_refused(s3_env, tmp_path):
    client, bucket = s3_env
    uri = upload_tiny_model(client, bucket, "models/m", tmp_path / "saved")
    weights = "transformer/diffusion_pytorch_model.safetensors"
    data = (tmp_path / "saved" / weights).read_bytes()
    first = fetch_s3_model(uri)
    # What a killed fetch leaves: the .partial folder with half of one file.
    partial = first.parent / f"{first.name}.partial"
    first.rename(partial)
    (partial / ".videogpa-fetched.json").unlink()
    (partial / weights).unlink()
    etag = client.head_object(Bucket=bucket, Key=f"models/m/{weights}")["ETag"].strip('"')
    part = partial / f"{weights}.part-{hashlib.sha1(etag.encode()).hexdigest()[:12]}"
    part.write_bytes(data[: len(data) // 2])
    assert fetch_s3_model(uri) == first and (first / weights).read_bytes() == data
    # Bytes that do not match the object's ETag (MD5) are refused, and the next fetch starts afresh.
    first.rename(partial)
    (partial / ".videogpa-fetched.json").unlink()
    (partial / weights).unlink()
    part.write_bytes(b"x" * (len(data) // 2))
    with pytest.raises(InputError, match="another checksum than its ETag; run again"):
        fetch_s3_model(uri)
    assert not part.exists() and (fetch_s3_model(uri) / weights).read_bytes() == data


def test_bad_s3_model_sources_are_one_line(s3_env):
    client, bucket = s3_env
    client.put_object(Bucket=bucket, Key="empty/readme.txt", Body=b"x")
    sampling = SamplingConfig(num_frames=9, height=64, width=64, num_inference_steps=2)
    for uri, message in ((f"s3://{bucket}/empty", "holds no diffusers model"),
                         ("s3://no-such-bucket-x/m", "the bucket does not exist")):
        with pytest.raises(InputError, match=message) as info:
            check_model(ModelConfig(family="cogvideox-t2v", pretrained=uri), sampling)
        assert "\n" not in str(info.value) and "model.pretrained" in str(info.value)
        with pytest.raises(InputError, match=message):
            fetch_s3_model(uri)
