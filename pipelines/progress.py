"""One progress line per running dataset where the output is no interactive terminal.

On a terminal Ray Data draws progress bars, and those stay. Anywhere else (``ray job logs``, a pipe,
CI) Ray Data logs a block of about 15 lines per dataset every 10 s instead. There, :func:`install`
registers :class:`LineProgress`, a Ray Data execution callback that travels with the DataContext into
every process that executes a dataset (the driver; Ray Train's split coordinator, which reads the
training shards) and puts one line every ``interval`` seconds in place of that block::

    round 0 · candidates: GenerateCandidates 18/18, ScoreCandidates 9/18 rows; ScoreCandidates 1.47 rows/s, ~6 s left

Ray Data's blocks still go to the run's log file (``logs/``). No stage is named here: any dataset
any stage executes gets it, labelled with the stage that :func:`set_label` last named
(``pipelines.rounds`` names each stage it starts).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from ray.data import DataContext
from ray.data._internal.execution.execution_callback import ExecutionCallback
from ray.data._internal.progress.base_progress import BaseExecutionProgressManager, NoopExecutionProgressManager
from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 30.0
# Ray Data's own setting for the interval of its non-interactive progress log, honoured when set.
INTERVAL_ENV = "RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL"
_INTERVAL_KEY = "videogpa.progress_interval_s"
_LABEL_KEY = "videogpa.progress_label"


def install(interactive: bool, file_only: Callable[[str], None] | None = None) -> None:
    """Report the datasets this process (and the actors it starts) executes as single lines, unless
    ``interactive``, where Ray Data's progress bars stay as they are. ``file_only``: where this
    process's Ray Data progress blocks go instead of the terminal (the run's log file)."""
    global _file_only
    if interactive:
        return
    ctx = DataContext.get_current()
    if LineProgress not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes.append(LineProgress)
    ctx.set_config(_INTERVAL_KEY, float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_S))
    # Ray Data running inside an actor draws its bars through the driver's terminal unless told not
    # to; then, as on the driver, it picks its logged progress, which LineProgress replaces.
    ctx.use_ray_tqdm = False
    ray_log = logging.getLogger(LoggingExecutionProgressManager.__module__)
    ray_log.removeFilter(_to_file_only)
    _file_only = file_only
    if file_only is not None:
        ray_log.addFilter(_to_file_only)


_file_only: Callable[[str], None] | None = None
_RAY_FORMAT = logging.Formatter("%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s")


def _to_file_only(record: logging.LogRecord) -> bool:
    """A logging filter for Ray Data's progress log: the record goes to ``_file_only``, not the terminal."""
    if _file_only is not None:
        _file_only(_RAY_FORMAT.format(record) + "\n")
    return False


def set_label(label: str) -> None:
    """Name the datasets created from now on in their progress lines (e.g. "round 2 · candidates")."""
    DataContext.get_current().set_config(_LABEL_KEY, label)


class LineProgress(ExecutionCallback):
    """Replaces Ray Data's logged progress (its choice for output that is no terminal) by
    :class:`_LineManager`; leaves progress bars alone."""

    def before_execution_starts(self, executor: Any) -> None:
        # Ray Data offers no public way to pick the progress display; the executor's attributes
        # used here are those of Ray 2.60. Should they change, Ray's own progress log stays.
        try:
            if isinstance(executor._progress_manager, LoggingExecutionProgressManager):
                ctx = executor._data_context
                executor._progress_manager = _LineManager(
                    executor._progress_manager, executor._dataset_id, executor._topology,
                    ctx.get_config(_LABEL_KEY, None), ctx.get_config(_INTERVAL_KEY, DEFAULT_INTERVAL_S))
        except AttributeError as err:
            log.debug("progress: Ray Data's progress log kept (%s)", err)


class _LineManager(BaseExecutionProgressManager):
    """A progress "display" that logs one line per interval: each operator's rows done/total (Ray's
    estimate of the total, "?" until its first task ends), and the rate and time left of the operator
    furthest behind (its rate since the previous line). Ray's own progress log goes on where
    :func:`install` gave it a file of its own (the driver's run log); elsewhere it is dropped."""

    TOTAL_PROGRESS_REFRESH_EVERY_N_STEPS = 1  # refresh() is cheap; it logs by elapsed time

    def __init__(self, ray_log: LoggingExecutionProgressManager, dataset_id: str, topology: Any, label: str | None,
                 interval_s: float):
        self._inner = ray_log if _file_only is not None else NoopExecutionProgressManager(
            dataset_id, topology, False, False)
        self._label = label or f"dataset {dataset_id}"
        self._interval = interval_s
        self._start = time.monotonic()
        self._next = self._start + interval_s
        self._ops: dict[Any, tuple[str, int, int | None]] = {}
        self._last: dict[str, tuple[float, int]] = {}  # op name -> (time, rows) at the previous line

    def start(self) -> None:
        self._inner.start()

    def close_with_finishing_description(self, desc: str, success: bool) -> None:
        self._inner.close_with_finishing_description(desc, success)

    def update_total_progress(self, new_rows: int, total_rows: int | None) -> None:
        self._inner.update_total_progress(new_rows, total_rows)

    def update_total_resource_status(self, resource_status: str) -> None:
        self._inner.update_total_resource_status(resource_status)

    def update_operator_progress(self, opstate: Any, resource_manager: Any) -> None:
        self._inner.update_operator_progress(opstate, resource_manager)
        op = opstate.op
        if not op.name.endswith("Write"):  # a write's outputs are one stats row per task, not rows
            self._ops[opstate] = (op.name, op.metrics.row_outputs_taken, op.num_output_rows_total())

    def refresh(self) -> None:
        self._inner.refresh()
        now = time.monotonic()
        if now < self._next or not self._ops:
            return
        self._next = now + self._interval
        # In an actor (Ray Train's split coordinator) this module's logger has no handler; Ray Data's has.
        (log if log.hasHandlers() else logging.getLogger("ray.data")).info("%s", self.line(now))

    def line(self, now: float) -> str:
        ops = list(self._ops.values())
        text = ", ".join(f"{_short(name)} {done}/{total if total is not None else '?'}" for name, done, total in ops)
        known = [(done / total, name, done, total) for name, done, total in ops if total]
        if not known or min(known)[0] >= 1:  # no total yet, or every operator done
            return f"{self._label}: {text} rows"
        _, name, done, total = min(known)
        since, before = self._last.get(name, (self._start, 0))
        self._last[name] = (now, done)
        rate = (done - before) / (now - since) if now > since and done > before else done / (now - self._start)
        left = f"~{_duration((total - done) / rate)} left" if rate > 0 else "no rows yet"
        return f"{self._label}: {text} rows; {_short(name)} {rate:.3g} rows/s, {left}"


def _short(name: str) -> str:
    """"MapBatches(ScoreCandidates)->Write" -> "ScoreCandidates->Write"."""
    return "->".join(re.sub(r"^MapBatches\((.*)\)$", r"\1", part) for part in name.split("->"))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
