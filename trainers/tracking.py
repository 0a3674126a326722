"""Live metrics in the tools ML engineers watch: TensorBoard, MLflow and W&B, each optional.

One :class:`Tracker` per process that logs: the trainer's rank 0 (per optimizer step) and the
driver (per round). Both write to the same places, found from one :class:`TrackingTarget`:

- TensorBoard: event files in ``<run>/tensorboard/``. Each writer has its own file (named by time,
  host and pid), so a resumed trainer adds a file and never touches an earlier one. On a local run
  the file is written in place; on S3 it is written to a local folder and uploaded whole (one PUT,
  so an object is never torn) every ``upload_every_s`` and at close.
- MLflow: one MLflow run per videogpa run, found by its tag ``videogpa.run`` (the run's URI), made
  with the resolved config as params by the first process that logs.
- W&B: one W&B run per videogpa run (id from the run's URI, resumed by every process), offline by
  default: it needs no network and ``wandb sync`` uploads it later.

A backend that fails (package missing, server down, disk full) is switched off in that process
after one warning line; the run goes on. Every backend opens on its first write, so a command that
does no work (a finished run started again) writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict

from trainers.storage_dirs import upload_dir

log = logging.getLogger("videogpa.tracking")


class MLflowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # null: MLFLOW_TRACKING_URI, else a SQLite file beside a local run (<run>/mlflow.db); an s3:// run
    # needs one here (a server, or a store every process can reach). file: stores work too.
    tracking_uri: str | None = None
    experiment: str = "videogpa"


class WandbConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    mode: Literal["offline", "online"] = "offline"  # offline: no network; `wandb sync <dir>` uploads later
    project: str = "videogpa"
    entity: str | None = None
    dir: str | None = None  # null: the run folder of a local run, else W&B's default (./wandb)


class TrackingConfig(BaseModel):
    """The ``tracking:`` config section."""

    model_config = ConfigDict(extra="forbid")

    tensorboard: bool = True  # <run>/tensorboard/
    mlflow: MLflowConfig = MLflowConfig()
    wandb: WandbConfig = WandbConfig()


@dataclasses.dataclass(frozen=True)
class TrackingTarget:
    """Where one run's metrics go; picklable, so the driver hands it to the trainer's rank 0."""

    config: TrackingConfig
    run_name: str
    run_uri: str  # identifies the run to MLflow (tag) and W&B (id)
    params: Mapping[str, str]  # the resolved config, flattened; nothing secret (pipelines.tracking)
    tensorboard_dir: str  # path inside ``filesystem``, no scheme
    filesystem: pafs.FileSystem | None = None  # None or local: ``tensorboard_dir`` is a local path
    local_run_dir: str | None = None  # the run folder when it is local (default place of MLflow/W&B files)
    train_step_offset: int = 0  # per-step metrics are logged at offset + step: one x axis over rounds


class _Backend:
    name = ""

    def log(self, group: str, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def text(self, tag: str, text: str, step: int) -> None:
        """A block of text (the config); only TensorBoard keeps it, the others have params."""

    def close(self) -> None:
        """Flush and release."""


class _TensorBoard(_Backend):
    name = "tensorboard"

    def __init__(self, target: TrackingTarget, upload_every_s: float = 30.0):
        from torch.utils.tensorboard import SummaryWriter

        fs = target.filesystem
        self._remote = fs is not None and not isinstance(fs, pafs.LocalFileSystem)
        self._fs, self._dest, self._every = fs, target.tensorboard_dir, upload_every_s
        self._local = tempfile.mkdtemp(prefix="videogpa-tb-") if self._remote else target.tensorboard_dir
        self._writer = SummaryWriter(self._local, flush_secs=10)
        self._uploaded = time.monotonic()

    def log(self, group: str, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(f"{group}/{key}", value, step)
        if self._remote and time.monotonic() - self._uploaded > self._every:
            self._upload()

    def text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, step)

    def _upload(self) -> None:
        self._writer.flush()
        upload_dir(self._local, self._dest, self._fs)  # this writer's own file(s): others are never rewritten
        self._uploaded = time.monotonic()

    def close(self) -> None:
        self._writer.close()
        if self._remote:
            self._upload()
            shutil.rmtree(self._local, ignore_errors=True)


def mlflow_uri(target: TrackingTarget) -> str | None:
    """The MLflow tracking URI a run logs to (see :class:`MLflowConfig`); None when there is none."""
    uri = target.config.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and target.local_run_dir:
        uri = f"sqlite:///{os.path.join(target.local_run_dir, 'mlflow.db')}"
    return uri


class _MLflow(_Backend):
    name = "mlflow"
    RUN_TAG = "videogpa.run"

    def __init__(self, target: TrackingTarget):
        uri = mlflow_uri(target)
        if not uri:
            raise ValueError("no tracking URI for a run on S3: set tracking.mlflow.tracking_uri")
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store in maintenance mode and refuses it unless asked for by this
            # switch; a file store is what this config names, so ask for it.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        if uri.startswith("sqlite:///"):
            os.makedirs(os.path.dirname(uri[len("sqlite:///"):]) or ".", exist_ok=True)
        from mlflow.tracking import MlflowClient

        self._client = client = MlflowClient(tracking_uri=uri)
        cfg = target.config.mlflow
        experiment = client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(cfg.experiment)
        quoted = target.run_uri.replace("'", "\\'")
        found = client.search_runs([experiment_id], f"tags.`{self.RUN_TAG}` = '{quoted}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
        else:  # the first process to log makes the run, with the config it ran under
            from mlflow.entities import Param

            run = client.create_run(experiment_id, run_name=target.run_name, tags={self.RUN_TAG: target.run_uri})
            self.run_id = run.info.run_id
            params = [Param(k, v) for k, v in target.params.items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, group: str, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(f"{group}/{k}", v, now, step) for k, v in scalars.items()])

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


class _Wandb(_Backend):
    name = "wandb"

    def __init__(self, target: TrackingTarget):
        import wandb

        cfg = target.config.wandb
        run_dir = cfg.dir or target.local_run_dir
        if run_dir:
            os.makedirs(run_dir, exist_ok=True)
        self._run = wandb.init(
            project=cfg.project, entity=cfg.entity, name=target.run_name, mode=cfg.mode, dir=run_dir,
            id=hashlib.sha256(target.run_uri.encode()).hexdigest()[:16], resume="allow",
            config=dict(target.params), allow_val_change=True,
            # no console capture, system metrics or machine metadata: what W&B gets is what we log
            settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True,
                                    x_disable_machine_info=True, save_code=False, silent=True),
        )
        self._steps: set[str] = set()

    def log(self, group: str, scalars: dict[str, float], step: int) -> None:
        axis = f"{group}/step"
        if group not in self._steps:  # each group has its own x axis: steps for train, rounds for round
            self._run.define_metric(axis)
            self._run.define_metric(f"{group}/*", step_metric=axis)
            self._steps.add(group)
        self._run.log({**{f"{group}/{k}": v for k, v in scalars.items()}, axis: step})

    def close(self) -> None:
        import wandb

        self._run.finish()
        # finish() can return before W&B's service process has written the run's last records; a
        # trainer worker may be stopped right after this, so wait for the service to end.
        wandb.teardown()


_BACKENDS = (("tensorboard", _TensorBoard), ("mlflow", _MLflow), ("wandb", _Wandb))


class Tracker:
    """Fans each write out to the enabled backends; a backend that raises is switched off after one
    warning line naming it (``who``: which process, for that line)."""

    def __init__(self, target: TrackingTarget | None, who: str):
        self._target, self._who = target, who
        cfg = target.config if target else None
        self._wanted = [name for name, _ in _BACKENDS if cfg is not None and
                        (cfg.tensorboard if name == "tensorboard" else getattr(cfg, name).enabled)]
        self._open: dict[str, _Backend] = {}

    @property
    def active(self) -> bool:
        return bool(self._wanted)

    def _call(self, method: str, *args: Any) -> None:
        for name, cls in _BACKENDS:
            if name not in self._wanted:
                continue
            try:
                if name not in self._open:
                    self._open[name] = cls(self._target)
                getattr(self._open[name], method)(*args)
            except Exception as err:  # noqa: BLE001 - tracking must never fail the run
                self._wanted.remove(name)
                self._open.pop(name, None)
                first = str(err).splitlines()[0][:300] if str(err) else ""
                log.warning("tracking: %s is off for the %s after an error: %s: %s", name, self._who,
                            type(err).__name__, first)

    def log(self, group: str, scalars: Mapping[str, Any], step: int) -> None:
        """``scalars`` (non-numbers and non-finite values are left out) as ``<group>/<key>`` at ``step``."""
        finite = {k: float(v) for k, v in scalars.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if finite and self._wanted:
            self._call("log", group, finite, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self._wanted:
            self._call("text", tag, text, step)

    def log_train_step(self, metrics: Mapping[str, Any], step: int) -> None:
        """One optimizer step's metrics, at the run-wide step (this round's offset + ``step``)."""
        self.log("train", metrics, step + (self._target.train_step_offset if self._target else 0))

    def close(self) -> None:
        opened, self._open = self._open, {}
        for name, backend in opened.items():
            try:
                backend.close()
            except Exception as err:  # noqa: BLE001
                log.warning("tracking: %s failed to close for the %s: %s: %s", name, self._who,
                            type(err).__name__, str(err).splitlines()[0][:300] if str(err) else "")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
