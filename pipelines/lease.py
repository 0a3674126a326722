"""One writer per run: the run's lease.

A command that writes a run first takes its lease: ``lease/<generation>.json`` in the run, naming
the holder (host, pid, Ray job id, command), when it started, and its last heartbeat. It is created
atomically (``RunStore.create_exclusive``: an exclusive create locally, ``If-None-Match: *`` on S3),
so of two commands racing for a run exactly one gets it; the other is refused in one line naming
the holder, before it writes anything. The holder renews the heartbeat every quarter of
``storage.lease_timeout_s`` and deletes its file when it ends, however it ends short of SIGKILL.

A lease is stale when its heartbeat is older than the timeout, or at once when its holder ran on
this host and its process is gone (a crash, a SIGKILL): the next command takes it over by creating
the next generation's file (exclusively again, so two takers cannot both win), logs whose lease it
took, and deletes the older files.

Fencing: a holder that lost its lease (paused, partitioned, then back) must not overwrite the new
holder's work. Every write and delete of the run's store (stage markers, manifests, config records,
logs, reports) and the trainer's checkpoints and LoRA export first check that the holder's own
file still carries its token and that no next generation exists; otherwise the command stops with
one line. The check precedes the write, so a holder paused between the two can still land that one
write: storage without conditional writes on arbitrary keys offers no tighter bound.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from actors.errors import InputError
from pipelines.storage import RunStore, StorageSpec, read_bytes, write_bytes_atomic

log = logging.getLogger(__name__)

LEASE_DIR = "lease"


def _rel(generation: int) -> str:
    return f"{LEASE_DIR}/{generation:08d}.json"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _pid_namespace() -> str | None:
    """Which pid space the pid lives in: two containers may share a host name but not their pids."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.Error:
        return None


def _read(store: RunStore, generation: int) -> dict[str, Any] | None:
    """A lease file's record, or None when it does not exist (any more)."""
    data = read_bytes(store.fs, store.path(_rel(generation)), store.spec.max_attempts, missing_ok=True)
    return None if data is None else json.loads(data.decode("utf-8"))


def _generations(store: RunStore) -> list[int]:
    return sorted(int(name.rsplit("/", 1)[-1][:-5]) for name in store.list_files(LEASE_DIR, ".json")
                  if name.rsplit("/", 1)[-1][:-5].isdigit())


def describe(record: dict[str, Any]) -> str:
    """The holder, as the refusal and takeover lines name it."""
    job = f", Ray job {record['ray_job_id']}" if record.get("ray_job_id") else ""
    return f"`videogpa {record.get('command')}` (pid {record.get('pid')} on {record.get('host')}{job})"


def stale_because(record: dict[str, Any], timeout_s: float, now: float | None = None) -> str | None:
    """Why the lease of ``record`` may be taken over, or None while its holder is alive."""
    age = (time.time() if now is None else now) - float(record.get("heartbeat_at", 0))
    if age > timeout_s:
        return f"its last heartbeat was {age:.0f} s ago (storage.lease_timeout_s={timeout_s:g})"
    if record.get("host") == socket.gethostname() and record.get("pid_namespace") == _pid_namespace():
        started = _process_started(int(record.get("pid", -1)))
        if started is None or abs(started - float(record.get("pid_started", 0))) > 1.0:
            return f"its process {record.get('pid')} on this host is gone"
    return None


@dataclass(frozen=True)
class Fence:
    """Raises an InputError once the lease of ``generation`` (held with ``token``) is no longer this
    command's. Picklable: trainer workers call it before they write checkpoints and the LoRA."""

    spec: StorageSpec
    run_name: str
    generation: int
    token: str
    _stores: dict = field(default_factory=dict, compare=False, repr=False)

    def lost(self) -> str | None:
        """Why the lease is lost, or None while it is held."""
        store = self._stores.get("store") or self._stores.setdefault("store", RunStore(self.spec, self.run_name))
        newer = _read(store, self.generation + 1)
        own = _read(store, self.generation) if newer is None else None
        if newer is None and own is not None and own.get("token") == self.token:
            return None
        how = (f"taken over by {describe(newer)} at {_utc(float(newer['started_at']))}" if newer
               else "released or taken over by another command")
        return (f"run {store.uri()}: this command's lease (generation {self.generation}) was {how}; it stops "
                "without writing more, leaving the run to its holder")

    def __call__(self) -> None:
        why = self.lost()
        if why:
            raise InputError(why)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_stores"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _stores={})


class Lease:
    """A held lease, renewed by a daemon thread until :meth:`release`; ``fence`` raises once it is lost."""

    def __init__(self, store: RunStore, record: dict[str, Any], timeout_s: float):
        self.store, self.record, self.timeout_s = store, record, timeout_s
        self.fence = Fence(store.spec, store.run_name, record["generation"], record["token"])
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="videogpa-lease", daemon=True)

    @property
    def generation(self) -> int:
        return int(self.record["generation"])

    def _renew(self) -> None:
        self.record["heartbeat_at"] = time.time()
        write_bytes_atomic(self.store.fs, self.store.path(_rel(self.generation)),
                           json.dumps(self.record, indent=2, sort_keys=True).encode("utf-8"))

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            try:
                self._lost = self.fence.lost()
                if self._lost:
                    log.error("%s", self._lost)
                    return
                self._renew()
            except Exception as err:  # noqa: BLE001 - a missed heartbeat is retried; the fence decides
                log.warning("lease: heartbeat not written (%s); retrying in %.0f s", str(err).splitlines()[0][:200],
                            self.timeout_s / 4)

    def release(self) -> None:
        """Stop renewing and delete this command's lease file, and older ones; nothing if it was lost."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.store.spec.request_timeout_s * 2)
        try:
            if self._lost or self.fence.lost():
                return
            _delete_up_to(self.store, self.generation)
        except (OSError, InputError) as err:  # the next command takes it over once stale
            log.warning("lease: not released (%s)", str(err).splitlines()[0][:200])
            return
        if isinstance(self.store.fs, pafs.LocalFileSystem):  # a refused first command leaves no empty run
            for rel in (LEASE_DIR, ""):
                try:
                    os.rmdir(self.store.path(rel))
                except OSError:
                    break


def _delete_up_to(store: RunStore, generation: int) -> None:
    for g in _generations(store):
        if g <= generation:
            try:
                store.fs.delete_file(store.path(_rel(g)))
            except FileNotFoundError:
                pass


def acquire(store: RunStore, timeout_s: float, command: str, ray_job_id: str | None = None) -> Lease:
    """Take the run's lease (or take over a stale one) and start renewing it; fences ``store`` with it.
    Refused with one InputError naming the holder while a live command holds it."""
    for _ in range(5):
        generations = _generations(store)
        top = generations[-1] if generations else 0
        held = _read(store, top) if top else None
        if top and held is None:
            continue  # released while we looked
        why = stale_because(held, timeout_s) if held else None
        if held and why is None:
            age = time.time() - float(held.get("heartbeat_at", 0))
            raise InputError(
                f"run {store.uri()} is being written by {describe(held)} since {_utc(float(held['started_at']))} "
                f"(last heartbeat {age:.0f} s ago); one writer per run: wait for it to end, or stop it (a lease "
                f"not renewed for storage.lease_timeout_s={timeout_s:g} s is taken over)")
        now = time.time()
        record = {"generation": top + 1, "token": uuid.uuid4().hex, "command": command, "host": socket.gethostname(),
                  "pid": os.getpid(), "pid_started": _process_started(os.getpid()), "pid_namespace": _pid_namespace(),
                  "ray_job_id": ray_job_id, "started_at": now, "heartbeat_at": now}
        if not store.create_exclusive(_rel(top + 1), json.dumps(record, indent=2, sort_keys=True).encode("utf-8")):
            # Another command took this generation first, unless a retried PUT found our own first attempt
            # (its response lost on the way back): look again.
            if (_read(store, top + 1) or {}).get("token") != record["token"]:
                continue
        if held:
            log.warning("took over the lease of run %s from %s, started %s: %s", store.uri(), describe(held),
                        _utc(float(held["started_at"])), why)
            _delete_up_to(store, top)
        lease = Lease(store, record, timeout_s)
        lease._thread.start()
        store.fence = lease.fence
        log.info("lease of run %s taken (generation %d)", store.uri(), top + 1)
        return lease
    raise InputError(f"run {store.uri()}: other commands keep taking its lease; run this one when they have ended")
