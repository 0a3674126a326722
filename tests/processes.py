"""Find and stop exactly the processes a test started (and everything Ray spawned from them).

`ray stop` would kill every Ray process of the user, other tests' runtimes included; instead each
process a test starts carries a unique marker variable in its environment, which Ray passes on to
all it spawns (GCS, raylets, agents, workers, drivers).
"""

from __future__ import annotations

import os
import signal
import time

MARKER_VAR = "VIDEOGPA_TEST_PROCESS_GROUP"


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
