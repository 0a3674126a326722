"""Shared fixtures: a real S3 API server (moto) on 127.0.0.1 and a local Ray runtime."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.rehearsal.processes import free_port
from tests.support.quickstart import PROGRESS_ENV, QUICKSTART_ARGS, QUICKSTART_ENV, QuickstartRun
from tests.support.ray_runtime import local_ray

# Tests that start or join a Ray runtime, or run a command that does, go one after another on one
# pytest-xdist worker (the group "ray"): while two Ray clusters run on one host, Ray Train's
# placement-group cleaner can query the wrong one and kill a healthy run. The others run beside
# them on the second worker, with one torch thread: the Ray tests' actors keep the other core busy.
RAY_FIXTURES = {"ray_local", "ray_test", "ray_address", "quickstart_run", "interrupted_run", "flaky_s3_run"}
RAY_FOLDERS = ("e2e", "faults")


def pytest_configure(config):
    config.addinivalue_line("markers", "runs_ray: starts Ray itself (a subprocess that runs a benchmark or the CLI)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    tests = Path(__file__).resolve().parent
    for item in items:
        folder = item.path.resolve().relative_to(tests).parts[0]
        if folder in RAY_FOLDERS or RAY_FIXTURES & set(item.fixturenames) or item.get_closest_marker("runs_ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _one_torch_thread_beside_ray(request):
    beside_ray = os.environ.get("PYTEST_XDIST_WORKER") and not request.node.get_closest_marker("xdist_group")
    with _torch_threads(1) if beside_ray else contextlib.nullcontext():
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: extra threads only add contention on a shared 2-core machine."""
    with _torch_threads(1):
        yield


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


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A local Ray runtime for one test module; started after the S3 env so workers inherit it."""
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="module")
def ray_address(ray_local):
    """The module's Ray runtime, for `videogpa` subprocesses to join through RAY_ADDRESS (as a `ray
    job submit` would) instead of each starting and stopping a local cluster of its own."""
    return ray_local.get_runtime_context().gcs_address


@pytest.fixture()
def ray_test(s3_server):
    """A local Ray runtime for one test, closed before the next test's runs may start their own."""
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory) -> QuickstartRun:
    """One complete quickstart run, shared by the tests that check it (test_align_e2e) and those that
    must leave it byte-identical (test_bad_input). Session-scoped fixtures are set up before module
    ones, so no test's Ray runtime is open while this command starts its own."""
    out = tmp_path_factory.mktemp("quickstart")
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "align", *QUICKSTART_ARGS, f"output_uri={out}"],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=900,
                            env={**os.environ, **QUICKSTART_ENV, **PROGRESS_ENV})
    assert result.returncode == 0, result.stderr[-4000:]
    return QuickstartRun(out, result)


@pytest.fixture(scope="session")
def interrupted_run(tmp_path_factory):
    """The two-round run of tests/support/shared_runs.py that every process fault hits in turn,
    checked by tests/faults/test_faults.py (actors, trainer worker, driver between stages) and
    tests/faults/test_resume.py (driver inside round 1)."""
    from tests.support.shared_runs import interrupted_run

    return interrupted_run(tmp_path_factory.mktemp("interrupted"))


@pytest.fixture(scope="session")
def flaky_s3_run(s3_server, tmp_path_factory):
    """One run to S3 through a flaky proxy (tests/support/shared_runs.py): tests/faults/test_faults.py
    checks that it survived the faults, tests/e2e/test_align_e2e.py that it left what a clean run to
    S3 leaves."""
    from tests.support.shared_runs import flaky_s3_run

    return flaky_s3_run(tmp_path_factory.mktemp("flaky-s3"), s3_server)
