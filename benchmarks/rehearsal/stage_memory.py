"""Peak resident memory of each stage of a run, from the process tree this benchmark started.

Every process Ray starts for us carries the marker variable of ``benchmarks.rehearsal.processes``;
a Ray actor's process title names its class (``ray::MapWorker(MapBatches(GenerateCandidates))``,
``ray::RayTrainWorker``), which says its stage. A sampler thread reads each marked process's
resident set size (``VmRSS``) every ``every_s`` and keeps, per stage, the largest process's peak. On
CPU that process also holds its Python, torch and Ray, ~1 GiB a GPU plan leaves out:
``import_baseline_mib`` measures that part, a fresh Ray actor that imports what a stage's actors
import, and no model.
"""

from __future__ import annotations

import json
import os
import threading

from benchmarks.rehearsal.processes import cmdline, marked_pids

# A process title fragment -> the stage whose actors or workers run in it.
STAGE_OF_TITLE = {"EncodeTexts": "text", "GenerateCandidates": "generate", "ScoreCandidates": "score",
                  "EncodePairs": "encode", "RayTrainWorker": "train"}


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # gone
        return None
    return None


# What each stage's actors or workers import before they build a model: the libraries their model code
# pulls in (the diffusers pipeline and transformers' T5 for the video model's stages, LPIPS and Depth
# Anything 3 for scoring, DeepSpeed and peft for training).
STAGE_IMPORTS = {
    "text": ("pipelines.stages", "diffusers", "transformers"),
    "generate": ("pipelines.stages", "diffusers", "transformers"),
    "encode": ("pipelines.stages", "diffusers", "transformers"),
    "score": ("pipelines.stages", "lpips", "depth_anything_3.api"),
    "train": ("trainers.worker", "ray.train.torch", "deepspeed", "peft", "diffusers"),
}


def import_baseline_mib(stage: str) -> float:
    """Resident MiB of a fresh Ray actor after the imports of ``stage``'s actors (``STAGE_IMPORTS``):
    the interpreter and libraries a CPU actor holds besides its model. Needs ``ray.init`` first."""
    import ray

    @ray.remote(num_cpus=0)
    class Imports:
        def rss_after(self, modules: tuple[str, ...]) -> float:
            import importlib

            for module in modules:
                importlib.import_module(module)
            return rss_mib(os.getpid()) or 0.0

    probe = Imports.remote()
    try:
        return ray.get(probe.rss_after.remote(STAGE_IMPORTS[stage]))
    finally:
        ray.kill(probe)


def stage_of(title: str) -> str | None:
    return next((stage for key, stage in STAGE_OF_TITLE.items() if key in title), None)


class StageMemory:
    """``with StageMemory(marker) as m: ...`` then ``m.peak_mib``: stage -> largest process's peak RSS.
    ``save_to``: a JSON file rewritten whenever a peak grows, so a run cut short still shows its figures."""

    def __init__(self, marker: str, every_s: float = 0.5, save_to: str | None = None):
        self.marker, self.every_s, self.save_to = marker, every_s, save_to
        self.peak_mib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        before = dict(self.peak_mib)
        for pid in marked_pids(self.marker):
            stage = stage_of(cmdline(pid))
            rss = rss_mib(pid) if stage else None
            if rss is not None:
                self.peak_mib[stage] = max(self.peak_mib.get(stage, 0.0), rss)
        if self.save_to and self.peak_mib != before:
            with open(self.save_to + ".tmp", "w") as f:
                json.dump({"peak_mib": self.peak_mib}, f)
            os.replace(self.save_to + ".tmp", self.save_to)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> StageMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
