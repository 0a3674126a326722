"""A process that holds a run's lease through pipelines.lease, for the tests and benchmarks/lease.py,
which race, kill, pause and resume holders:
``python -m benchmarks.rehearsal.lease_holder <output_uri> <run_name> <timeout_s> <start_at> [<endpoint_url>]``.
At ``start_at`` (epoch seconds) it takes the lease and prints ``held <generation>``; then each stdin
line names a run-relative file it writes (fenced, as every commit point is) and prints ``wrote
<file>``; at the end of stdin it releases the lease. A refusal or a lost lease is one
``videogpa: error:`` line on stderr and exit 2, as the CLI has it."""

from __future__ import annotations

import os
import sys
import time

from actors.errors import InputError
from pipelines.lease import acquire
from pipelines.storage import RunStore, StorageSpec


def main(argv: list[str]) -> int:
    uri, run_name, timeout_s, start_at = argv[0], argv[1], float(argv[2]), float(argv[3])
    store = RunStore(StorageSpec(uri, endpoint_url=argv[4] if len(argv) > 4 else None, region="us-east-1",
                                 max_attempts=2), run_name)
    time.sleep(max(0.0, start_at - time.time()))
    lease = None
    try:
        lease = acquire(store, timeout_s, "lease-holder")
        print(f"held {lease.generation}", flush=True)
        for line in sys.stdin:
            store.write_json(line.strip(), {"writer": os.getpid()})
            print(f"wrote {line.strip()}", flush=True)
    except InputError as err:
        if lease is not None:
            lease.release()  # its heartbeat thread logs no more: the error line is the last, as in the CLI
        print(f"videogpa: error: {err}", file=sys.stderr, flush=True)
        return 2
    lease.release()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
