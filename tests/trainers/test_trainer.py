"""The Ray Train + DeepSpeed Diffusion-DPO trainer end to end (CPU, gloo, tiny CogVideoX).

Real Ray, DeepSpeed, peft and diffusers throughout; the only test hook is the fault injector
(``VIDEOGPA_TRAIN_FAULT_AT_STEP``) that makes rank 0 raise once after a given step.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from actors.model_config import ModelConfig
from tests.support.pairs import SHAPE, write_shards
from trainers.config import TrainerConfig
from trainers.train import train_dpo
from trainers.validation import validation_pair_ids
from trainers.worker import FAULT_ENV

MODEL = ModelConfig(family="cogvideox-t2v")
# Tiny LoRA, large lr/beta so a few full-batch steps move the loss clearly on 8 pairs. adam_eps 1e-6:
# Adam's first steps are ~lr·sign(g), so with eps 1e-8 gradient entries that are 0 up to float
# rounding (whose order changes with the worker count) would flip sign and split trajectories.
# 11 pairs, 3 held out for validation (at steps 2, 4 and 5, with the checkpoints), 8 trained on; the
# exported LoRA is the checkpoint with the lowest validation loss. The held-out pairs prefer what the
# training pairs reject, so validation loss rises as training goes on and the best is not the last.
BASE = dict(lora_rank=4, lora_alpha=4, learning_rate=1e-2, beta=100.0, warmup_steps=0, weight_decay=0.0, adam_eps=1e-6,
            micro_batch_size=2, effective_batch_size=8, gradient_checkpointing=False, cpus_per_worker=0.5,
            log_every=1, max_failures=0, max_steps=5, checkpoint_every=2, validation_fraction=0.25,
            export="best_validation")
N_PAIRS = 11
HELD_OUT = validation_pair_ids([f"pair-{i:03d}" for i in range(N_PAIRS)], BASE["validation_fraction"], seed=0)


def history(ckpt_dir: str) -> list[dict]:
    with open(os.path.join(ckpt_dir, "trainer_state.json")) as f:
        return json.load(f)["history"]


@pytest.fixture(scope="module")
def quiet_ray(ray_local):
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray_local


@pytest.fixture(scope="module")
def one_worker_run(quiet_ray, tmp_path_factory, s3_server):
    """1 worker, ZeRO-2, everything on S3 (moto): shards, checkpoints, exported LoRA. Returns the final
    metrics, the history, the local copies of the LoRA and of every kept checkpoint."""
    import boto3
    import pyarrow.fs as pafs

    bucket = "videogpa-trainer"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    fs = pafs.S3FileSystem(endpoint_override=s3_server, scheme="http", region="us-east-1",
                           access_key="testing", secret_key="testing")
    files = write_shards(f"{bucket}/run/round-000/pairs", N_PAIRS, filesystem=fs, swapped=HELD_OUT)
    cfg = TrainerConfig(**BASE, num_workers=1, zero_stage=2)
    # Held under the run's lease, as the CLI trains: its fence travels to the worker, which checks it
    # before each checkpoint and the LoRA export.
    from pipelines.lease import acquire
    from pipelines.storage import RunStore, StorageSpec

    lease = acquire(RunStore(StorageSpec(f"s3://{bucket}", endpoint_url=s3_server, region="us-east-1"), "run"), 120,
                    "train")
    metrics = train_dpo(cfg, MODEL, files, fs, f"s3://{bucket}/run/round-000", "checkpoints",
                        f"s3://{bucket}/run/round-000/lora", fence=lease.fence)
    lease.release()
    local = tmp_path_factory.mktemp("from-s3")
    for sub in ("ckpts", "lora"):
        (local / sub).mkdir()
    pafs.copy_files(f"{bucket}/run/round-000/checkpoints", str(local / "ckpts"), source_filesystem=fs)
    pafs.copy_files(f"{bucket}/run/round-000/lora", str(local / "lora"), source_filesystem=fs)
    latest = local / "ckpts" / os.path.basename(metrics["checkpoint"])
    return metrics, history(str(latest)), str(local / "lora"), local / "ckpts"


def test_loss_starts_at_ln2_falls_and_accuracy_rises(one_worker_run):
    metrics, hist, _, _ = one_worker_run
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5] and metrics["steps"] == 5
    assert hist[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)  # LoRA B = 0: policy == reference
    assert hist[0]["reward_accuracy"] == 0.0
    assert hist[-1]["loss"] < math.log(2) - 0.05
    assert metrics["reward_accuracy"] >= 0.75 and metrics["reward_margin"] > 0
    assert metrics["pairs_seen"] == 40 and metrics["peak_memory_mb"] > 0


def test_exported_lora_loads_in_the_family_pipeline(one_worker_run):
    from safetensors.torch import load_file

    from actors.models import build_pipeline, load_lora

    _, _, lora_dir, _ = one_worker_run
    state = load_file(os.path.join(lora_dir, "pytorch_lora_weights.safetensors"))
    assert state and all(k.startswith("transformer.") for k in state)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in state.items())  # it trained

    pipe = build_pipeline(MODEL)
    t = pipe.transformer
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(1, *SHAPE, generator=g), torch.randn(1, 16, 32, generator=g)
    from actors.families.cogvideox import cogvideox_rotary_emb

    rot = cogvideox_rotary_emb(t.config, SHAPE[0], SHAPE[2], SHAPE[3], "cpu")
    run = lambda: t(hidden_states=x, encoder_hidden_states=e, timestep=torch.tensor([500]),  # noqa: E731
                    image_rotary_emb=rot, return_dict=False)[0]
    with torch.no_grad():
        base = run()
        pipe.load_lora_weights(lora_dir, adapter_name="dpo")
        tuned = run()
    assert not torch.allclose(base, tuned)
    assert t.peft_config["dpo"].lora_alpha == 4 and t.peft_config["dpo"].r == 4
    load_lora(pipe, MODEL, lora_dir, scale=0.2)  # the Wan recipes' inference scale


def test_the_checkpoint_of_lowest_validation_loss_is_kept_and_exported(one_worker_run):
    from safetensors.torch import load_file

    metrics, hist, lora_dir, ckpts = one_worker_run
    validated = [h for h in hist if "val_loss" in h]
    assert [h["step"] for h in validated] == [2, 4, 5]  # at every checkpoint
    assert all(0 <= h["val_reward_accuracy"] <= 1 and math.isfinite(h["val_loss"]) for h in validated)
    assert metrics["val_loss"] == validated[-1]["val_loss"]
    assert validated[0]["val_loss"] < validated[-1]["val_loss"]  # learning the training pairs hurts these
    best = min(validated, key=lambda h: (h["val_loss"], -h["step"]))
    # keep_checkpoints=2: the two best by validation loss, and the latest (resume) always
    kept = sorted(p.name for p in ckpts.glob("checkpoint_0*"))
    assert f"checkpoint_{best['step']:07d}" in kept and "checkpoint_0000005" in kept and len(kept) <= 3
    trained = load_file(str(ckpts / f"checkpoint_{best['step']:07d}" / "trainer_state.safetensors"))
    exported = load_file(os.path.join(lora_dir, "pytorch_lora_weights.safetensors"))
    for key, value in exported.items():  # transformer.<module>.lora_A.weight <- <module>.lora_A.policy.weight
        module, matrix, _ = key.removeprefix("transformer.").rsplit(".", 2)
        assert torch.equal(value, trained[f"{module}.{matrix}.policy.weight::fp32"]), key


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_workers_follow_the_one_worker_trajectory(one_worker_run, quiet_ray, tmp_path, stage):
    """Same pairs, same effective batch (8 = all pairs every step, noise seeded per pair):
    ZeRO-2/3 over 2 gloo workers must reproduce the 1-worker losses up to float rounding."""
    _, ref_hist, ref_lora, _ = one_worker_run
    files = write_shards(str(tmp_path / "pairs"), N_PAIRS, swapped=HELD_OUT)
    cfg = TrainerConfig(**BASE, num_workers=2, zero_stage=stage)
    metrics = train_dpo(cfg, MODEL, files, None, str(tmp_path / "store"), "run", str(tmp_path / "lora"))
    hist = history(metrics["checkpoint"])
    assert [h["step"] for h in hist] == [h["step"] for h in ref_hist]
    for a, b in zip(hist, ref_hist):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4), (a, b)
        assert a["reward_margin"] == pytest.approx(b["reward_margin"], abs=1e-3, rel=1e-3), (a, b)
        # validation: 3 held-out pairs over 2 ranks (2 + 1 and a weight-0 repeat) average as on 1
        assert a.get("val_loss") == pytest.approx(b.get("val_loss"), abs=1e-4), (a, b)
    # the same checkpoint is the best and is the one exported
    from safetensors.torch import load_file

    ref, got = (load_file(os.path.join(d, "pytorch_lora_weights.safetensors")) for d in (ref_lora, tmp_path / "lora"))
    assert ref.keys() == got.keys()
    assert all(torch.allclose(ref[k], got[k], atol=1e-5) for k in ref)


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint_without_retraining_pairs(quiet_ray, tmp_path, monkeypatch):
    """16 pairs, 2 workers × micro 1 × accum 2 = 4 pairs/step, 4 steps per epoch. Rank 0 raises
    after step 3 (last checkpoint: step 2, mid-epoch); Ray Train restarts the group, which must
    continue at step 3 and train the rest of epoch 0 on exactly the pairs it had not seen."""
    files = write_shards(str(tmp_path / "pairs"), 16)
    marker = tmp_path / "fault-fired"
    monkeypatch.setenv(FAULT_ENV, f"3:{marker}")
    cfg = TrainerConfig(**{**BASE, "micro_batch_size": 1, "effective_batch_size": 4, "max_steps": 6,
                           "checkpoint_every": 2, "max_failures": 1, "validation_fraction": 0.0,
                           "export": "final"}, num_workers=2, zero_stage=2)
    store, lora = str(tmp_path / "store"), str(tmp_path / "lora")
    metrics = train_dpo(cfg, MODEL, files, None, store, "run", lora)
    assert marker.exists()  # the fault did fire and the run still completed
    assert metrics["steps"] == 6
    assert [h["step"] for h in history(metrics["checkpoint"])] == [1, 2, 3, 4, 5, 6]

    # epoch 0 ended at step 4: its checkpoint lists what each rank trained on in that epoch
    end_of_epoch0 = os.path.join(store, "run", "checkpoint_0000004")
    ids = []
    for r in (0, 1):
        with open(os.path.join(end_of_epoch0, f"rank-{r}.json")) as f:
            ids += json.load(f)["consumed_pair_ids"]
    assert sorted(ids) == [f"pair-{i:03d}" for i in range(16)]  # every pair once, none twice

    # Train V2 resume by name: a second call with the same name/storage continues the run.
    monkeypatch.delenv(FAULT_ENV)
    more = train_dpo(cfg.model_copy(update={"max_steps": 8}), MODEL, files, None, store, "run", lora)
    assert more["steps"] == 8
    assert [h["step"] for h in history(more["checkpoint"])] == list(range(1, 9))
    ids = []
    for r in (0, 1):
        with open(os.path.join(more["checkpoint"], f"rank-{r}.json")) as f:
            ids += json.load(f)["consumed_pair_ids"]
    assert sorted(ids) == [f"pair-{i:03d}" for i in range(16)]  # epoch 1, steps 5-8


def test_workers_of_a_driver_that_lost_its_lease_write_nothing(quiet_ray, tmp_path):
    """The fence travels to the workers: once the run's lease is no longer the driver's (here
    released, as after a takeover and the new holder's end), they stop before writing a checkpoint
    or the LoRA, and the driver's one line says why."""
    from pipelines.cli import _one_line
    from pipelines.lease import acquire
    from pipelines.storage import RunStore, StorageSpec

    files = write_shards(str(tmp_path / "pairs"), N_PAIRS, swapped=HELD_OUT)
    lease = acquire(RunStore(StorageSpec(str(tmp_path)), "run"), 120, "train")
    lease.release()
    with pytest.raises(Exception) as raised:  # noqa: PT011 - Ray Train's wrapper; what matters is inside
        train_dpo(TrainerConfig(**BASE, num_workers=1, zero_stage=2), MODEL, files, None, str(tmp_path / "run"),
                  "checkpoints", str(tmp_path / "run" / "lora"), fence=lease.fence)
    code, error = _one_line(raised.value, "the run")
    assert code == 2 and "lease (generation 1) was released or taken over" in str(error), str(error)
    assert not (tmp_path / "run" / "lora").exists() and not list((tmp_path / "run").glob("checkpoints/checkpoint_*"))
