"""Find and stop exactly the processes a test started (and everything Ray spawned from them).

`ray stop` would kill every Ray process of the user, other tests' runtimes included; instead each
process a test starts carries a unique marker variable in its environment, which Ray passes on to
all it spawns (GCS, raylets, agents, workers, drivers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

MARKER_VAR = "VIDEOGPA_TEST_PROCESS_GROUP"
REPO_ROOT = Path(__file__).resolve().parents[2]


def marked_pids(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds our marker (zombies have no environ)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:  # gone, or not ours to read
            continue
    return found


def cmdline(pid: int) -> str:
    """A process's command line as one string ("" when it is gone or not ours to read)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kill_marked(marker: str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, every process of this cluster; returns those still alive (should be none)."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = marked_pids(marker)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = marked_pids(marker)
        if not pids:
            return []
    return marked_pids(marker)


def start_cli(args: list[str], marker: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m pipelines.cli ARGS` in the repo, marked, output to ``log``: a file, not a pipe
    (nobody reads a pipe while a test waits, and a full one would block the driver)."""
    full_env = {**os.environ, **(env or {}), MARKER_VAR: marker}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO_ROOT, env=full_env,
                                stdout=out, stderr=subprocess.STDOUT)


def kill_driver_when(proc: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout_s: float, what: str) -> None:
    """SIGKILL the driver the moment ``ready()`` holds, as a lost head node would (the caller then
    stops the rest of its cluster with ``kill_marked``)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its mtime: what a resumed run must leave untouched."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
