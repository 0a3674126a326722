"""A local Ray runtime for one test process."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def local_ray():
    """A local Ray runtime for this process, shut down on exit.

    Kept short-lived on purpose: while two Ray clusters run on one host, Ray Train's
    placement-group cleaner can query the wrong one and kill a healthy run, so tests never
    hold a runtime open while a `videogpa` subprocess starts its own cluster.
    """
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()
