"""Peak resident memory of each stage of a run, from the process tree this benchmark started.

Every process Ray starts for us carries the marker variable of ``benchmarks.rehearsal.processes``;
a Ray actor's process title names its class (``ray::MapWorker(MapBatches(GenerateCandidates))``,
``ray::RayTrainWorker``), which says its stage. A sampler thread reads each marked process's
resident set size (``VmRSS``) every ``every_s`` and keeps, per stage, the largest process's peak.
"""

from __future__ import annotations

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


def stage_of(title: str) -> str | None:
    return next((stage for key, stage in STAGE_OF_TITLE.items() if key in title), None)


class StageMemory:
    """``with StageMemory(marker) as m: ...`` then ``m.peak_mib``: stage -> largest process's peak RSS."""

    def __init__(self, marker: str, every_s: float = 0.5):
        self.marker, self.every_s = marker, every_s
        self.peak_mib: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for pid in marked_pids(self.marker):
            stage = stage_of(cmdline(pid))
            rss = rss_mib(pid) if stage else None
            if rss is not None:
                self.peak_mib[stage] = max(self.peak_mib.get(stage, 0.0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> StageMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
