"""`ray job submit` of the real `videogpa align` to a real two-node, token-authenticated Ray cluster.

This is the laptop → cluster path of cluster/README.md, run locally: a head node (with the
dashboard / job API) and a second node started with `ray start` as separate processes, the
repository uploaded as the job's working_dir with cluster/runtime_env.yaml, the job driven
to SUCCEEDED through the Job API, and the run layout checked on disk.

The cluster and its isolation from anything else running Ray here: benchmarks/rehearsal/clusters.py. The
align job writes to a local path on two nodes, which the driver proves shared (both nodes read its
probe file) before any work.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import urllib.error
import uuid
from pathlib import Path

import pytest

from benchmarks.rehearsal.clusters import StaticCluster
from benchmarks.rehearsal.processes import marked_pids

pytestmark = pytest.mark.slow

JOB_TIMEOUT_S = 8 * 60


@pytest.fixture(scope="module")
def ray_cluster():
    # Short root, not pytest's (longer under xdist): Ray's unix socket paths (sockets/plasma_store,
    # raylet) must stay under 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="vgpa-rc-", dir="/tmp"))
    cluster = StaticCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        assert not left, f"processes of the test cluster survived teardown: {left}"
        # Visible check that nothing of ours remains, without looking at anyone else's processes.
        assert marked_pids(cluster.marker) == []
        shutil.rmtree(root, ignore_errors=True)


def _run_job(cluster: StaticCluster, entrypoint: list[str], name: str) -> str:
    submission_id = f"{name}-{uuid.uuid4().hex[:8]}"
    cluster.submit(entrypoint, submission_id)
    status = cluster.wait(submission_id, JOB_TIMEOUT_S)
    logs = cluster.logs(submission_id)
    if status != "SUCCEEDED":
        pytest.fail(f"job {submission_id} ended {status}; its logs:\n{logs[-20000:]}")
    return logs


def test_cluster_requires_token_and_sees_both_nodes(ray_cluster):
    # Token auth is on: the job API refuses a request without the token, and a wrong one.
    for token in (None, "0" * 64):
        with pytest.raises(urllib.error.HTTPError) as info:
            ray_cluster.get_json("/api/jobs/", token=token)
        assert info.value.code in (401, 403)
    assert isinstance(ray_cluster.get_json("/api/jobs/"), list)

    # A job joins the cluster through RAY_ADDRESS (as `videogpa align` does) and sees both nodes.
    probe = ("import json, ray; ray.init(); "
             "print('PROBE', json.dumps({'cpus': ray.cluster_resources().get('CPU'), "
             "'nodes': sum(n['Alive'] for n in ray.nodes())}))")
    logs = _run_job(ray_cluster, [sys.executable, "-c", probe], "probe")
    line = next(line for line in logs.splitlines() if line.startswith("PROBE "))
    assert json.loads(line[len("PROBE "):]) == {"cpus": 3.0, "nodes": 2}


def test_videogpa_align_job_writes_round(ray_cluster, tmp_path):
    out = tmp_path / "out"
    # The smallest run that has every stage (what is checked is the path to the cluster and the layout).
    entrypoint = ["videogpa", "align", "--config", "configs/quickstart.yaml", f"output_uri={out}", "run_name=jobtest",
                  "prompts.limit=2", "pairing.candidates_per_prompt=2", "trainer.max_steps=2"]
    logs = _run_job(ray_cluster, entrypoint, "videogpa-align")

    round_dir = out / "jobtest" / "round-000"
    manifest = round_dir / "manifest.json"
    assert manifest.is_file(), f"no manifest in {round_dir}; job logs:\n{logs[-8000:]}"
    json.loads(manifest.read_text())  # written last, and whole
    assert sorted((round_dir / "pairs").glob("*.parquet")), f"no pair shards in {round_dir / 'pairs'}"
    assert (out / "jobtest" / "config.yaml").is_file()
    assert "is shared by all 2 running nodes (probe file read on each)" in logs
    assert not list(out.glob(".videogpa-shared-probe-*")), "the probe file is removed"
