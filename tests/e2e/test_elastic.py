"""Elastic at cluster scale, on the rehearsal of cluster/raycluster.yaml (benchmarks/rehearsal/clusters.py: Ray's
own autoscaler with its fake multi-node provider, the manifest's head with no GPU and its GPU group
from 0; every node a real raylet).

One cluster serves the module. First a job with a node-local ``output_uri`` is refused before any
work; then the scenario of ``benchmarks/elastic.py`` runs once (``ray job submit`` of
``videogpa align``, outputs and checkpoints on the S3 server, a GPU node killed during the
candidates stage and another during training), and each test checks one promise on its figures
and on the run it downloaded.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from benchmarks import elastic
from benchmarks.rehearsal.clusters import LOCAL_OVERRIDES, AutoscalingCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(s3_server):
    root = Path(f"/tmp/vgpa-te-{uuid.uuid4().hex[:6]}")  # Ray's socket paths must stay short
    root.mkdir()
    c = AutoscalingCluster(root, env=elastic.AWS_ENV)
    try:
        c.start()
        yield c
    finally:
        assert c.stop() == [], "processes of the rehearsal cluster survived teardown"


@pytest.fixture(scope="module")
def local_output_refused(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("local-out")
    submission = cluster.submit(["videogpa", "align", "--config", "configs/quickstart.yaml", f"output_uri={out}",
                                 *[f"{p}_pool.num_gpus=1" for p in ("generation", "scoring", "encoding")]],
                                f"local-{uuid.uuid4().hex[:6]}")
    return cluster.wait(submission, 300), cluster.logs(submission), out, cluster.gpu_nodes()


@pytest.fixture(scope="module")
def scenario(cluster, local_output_refused, s3_server, tmp_path_factory):
    return elastic.run(tmp_path_factory.mktemp("elastic"), s3_server, cluster=cluster)


def test_local_output_on_a_multi_node_cluster_stops_before_any_work(local_output_refused):
    status, logs, out, gpu_nodes = local_output_refused
    assert status == "FAILED", logs[-3000:]
    errors = [line for line in logs.splitlines() if line.startswith("videogpa: ")]
    assert len(errors) == 1 and "Traceback" not in logs, logs[-3000:]
    assert errors[0].startswith("videogpa: error: output_uri=") and "s3://" in errors[0], errors
    assert "generation_pool needs {CPU: 1, GPU: 1}" in errors[0], errors
    assert gpu_nodes == [] and list(out.iterdir()) == [], "no node was started and nothing was written"


def test_gpu_nodes_follow_the_pools_from_zero_and_back(scenario):
    assert scenario["gpu_nodes_start"] == 0 and scenario["gpu_nodes_end"] == 0, scenario
    assert scenario["gpu_nodes_peak"] >= 3, scenario
    assert scenario["scale_up_s"] is not None, scenario
    # Terminated for idleness after their last actor ended, not while busy (the Timeline samples every 2 s).
    idle_s = LOCAL_OVERRIDES["idle_timeout_s"]
    assert scenario["scale_down_s"] is not None and scenario["scale_down_s"] >= idle_s - 4, scenario


def test_both_pools_grow_beyond_one_actor_over_several_nodes(scenario):
    assert scenario["generation_actors_peak"] >= 2 and scenario["scoring_actors_peak"] >= 2, scenario
    assert scenario["generation_nodes"] >= 2 and scenario["scoring_nodes"] >= 2, scenario


def _round(scenario) -> Path:
    return Path(scenario["run_dir"]) / "round-000"


def test_a_node_lost_during_candidates_loses_and_duplicates_nothing(scenario):
    assert scenario["nodes_killed"] == ["candidates", "train"], scenario["kills"]
    assert scenario["candidates_written"] == scenario["candidate_rows"] == scenario["candidates_expected"], scenario
    run = _round(scenario)
    manifest = json.loads((run / "manifest.json").read_text())
    table = pq.ParquetDataset([str(run.parent / f["path"]) for f in manifest["candidates"]["files"]]).read()
    keys = list(zip(table["prompt_id"].to_pylist(), table["seed"].to_pylist()))
    assert sorted(p.name for p in (run / "videos").iterdir()) == sorted(f"{p}-s{s}.mp4" for p, s in keys)


def test_the_trainer_resumes_from_its_checkpoint_on_a_replacement_node(scenario):
    killed = next(k["node"] for k in scenario["kills"] if k["stage"] == "train")
    # Two workers on two nodes, one of them lost, the group restarted: at least three nodes in all.
    assert scenario["trainer_nodes"] >= 3, scenario
    assert set(scenario["trainer_resumed_at_step"]) == {3}, scenario
    run = _round(scenario)
    final = sorted((run / "checkpoints").glob("checkpoint_0*"))[-1]
    history = json.loads((final / "trainer_state.json").read_text())["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert killed not in scenario["trainer_nodes_after_resume"], scenario


def test_the_run_passes_the_checks_of_a_clean_run(scenario):
    from actors.model_config import ModelConfig
    from actors.models import build_pipeline, load_lora

    run = _round(scenario)
    manifest = json.loads((run / "manifest.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["candidates"] == scenario["candidates_expected"] and metrics["train"]["steps"] == 6
    pairs = pq.ParquetDataset([str(run.parent / f["path"]) for f in manifest["pairs"]["files"]]).read()
    assert pairs.num_rows == manifest["pairs"]["rows"] == elastic.PROMPTS
    assert len(set(pairs["pair_id"].to_pylist())) == elastic.PROMPTS
    model = ModelConfig(family="cogvideox-t2v", pretrained="tiny", dtype="float32")
    pipe = build_pipeline(model, "cpu")
    load_lora(pipe, model, str(run / "lora"), 1.0)  # the exported LoRA loads into the model it was trained for
    assert Path(scenario["timeline_png"]).stat().st_size > 0
