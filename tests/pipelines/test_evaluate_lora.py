"""``videogpa evaluate --lora DIR``: a LoRA from outside the run (an official PEFT release here) is
copied into the run and loaded from there as the generation actors load it."""

from __future__ import annotations

import os

import pytest
import torch

from actors.errors import InputError
from actors.lora_formats import check_lora
from actors.model_config import ModelConfig
from actors.models import build_pipeline, load_lora
from pipelines.evaluate import stage_lora
from pipelines.evaluation_table import METRICS, format_table
from pipelines.storage import RunStore, StorageSpec
from tests.support.lora import DenoiserProbe, peft_lora
from trainers.storage_dirs import local_copy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_an_official_lora_is_staged_into_the_run_and_loads_from_there(tmp_path):
    family = "wan2.2-ti2v"
    adapter = peft_lora(family, tmp_path / "VideoGPA-Wan2.2TI2V-lora", wan_original=True)
    (tmp_path / "VideoGPA-Wan2.2TI2V-lora" / "README.md").write_text("model card")  # not part of the LoRA
    store = RunStore(StorageSpec(str(tmp_path / "runs")), "run")
    model = ModelConfig(family=family)
    assert check_lora(model, str(tmp_path / "VideoGPA-Wan2.2TI2V-lora")) == "peft-wan"  # the preflight check

    rel = stage_lora(store, str(tmp_path / "VideoGPA-Wan2.2TI2V-lora"))
    assert rel.startswith("evaluation/lora-") and rel.endswith("/lora")
    assert sorted(os.listdir(store.path(rel))) == ["adapter_config.json", "adapter_model.safetensors"]
    assert stage_lora(store, str(tmp_path / "VideoGPA-Wan2.2TI2V-lora")) == rel  # named by its contents

    # What GenerateCandidates does with the lora_rel evaluate hands it.
    pipe = build_pipeline(model)
    probe = DenoiserProbe(pipe, family)
    with local_copy(store.path(rel), store.fs) as lora_dir:
        load_lora(pipe, model, lora_dir, 1.0, source=store.uri(rel))
    torch.testing.assert_close(probe(pipe.transformer), probe(adapter.base_model.model), rtol=1e-5, atol=1e-6)


def test_a_bad_lora_for_evaluate_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match=f"^LoRA {tmp_path}: neither a diffusers LoRA"):
        check_lora(ModelConfig(family="cogvideox-t2v"), str(tmp_path))


def test_the_table_names_what_was_evaluated():
    row = {"mean": 0.5, "sem": 0.01}
    stats = {key: row for key, _ in METRICS}
    assert "LoRA VideoGPA-T2V-lora" in format_table(stats, stats, "LoRA VideoGPA-T2V-lora").splitlines()[0]
