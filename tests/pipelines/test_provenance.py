"""Which config differences change the meaning of a run's completed work."""

from __future__ import annotations

import yaml

from pipelines.config import dump_config, load_config
from pipelines.provenance import meaning_changes


def _quickstart(*overrides: str) -> dict:
    return yaml.safe_load(dump_config(load_config("configs/quickstart.yaml", list(overrides))))


def test_a_key_added_to_the_schema_since_the_run_began_is_no_change():
    now = _quickstart()
    recorded = _quickstart()
    del recorded["trainer"]["loss"], recorded["pairing"]["winner_threshold"]  # written before these existed
    assert meaning_changes(recorded, now) == []


def test_a_recorded_value_that_differs_from_the_new_default_is_a_change():
    recorded = _quickstart("trainer.weight_decay=0.0001")  # the default before it became 0.01
    assert meaning_changes(recorded, _quickstart()) == ["trainer.weight_decay"]


def test_where_and_how_fast_the_work_runs_may_change():
    assert meaning_changes(_quickstart(), _quickstart("trainer.num_workers=2", "rounds=3")) == []
    assert meaning_changes(_quickstart(), _quickstart("sampling.num_inference_steps=5")) == [
        "sampling.num_inference_steps"]
