"""Shared fixtures: a real S3 API server (moto) on 127.0.0.1 and a local Ray runtime."""

from __future__ import annotations

import contextlib
import os

import pytest

from tests.processes import free_port


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: extra threads only add contention on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API endpoint; credentials go through the environment as they would in production."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def s3_bucket(s3_server):
    import uuid

    import boto3

    name = f"videogpa-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@contextlib.contextmanager
def local_ray():
    """A local Ray runtime for this process, shut down on exit.

    Kept short-lived on purpose: while two Ray clusters run on one host, Ray Train's
    placement-group cleaner can query the wrong one and kill a healthy run, so tests never
    hold a runtime open while a `videogpa` subprocess starts its own cluster.
    """
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A local Ray runtime for one test module; started after the S3 env so workers inherit it."""
    with local_ray() as ray:
        yield ray
