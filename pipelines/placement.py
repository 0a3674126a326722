"""Where a run's work lands on the Ray cluster, checked on the driver before any pool starts.

Pool actors write videos, Ray Data writes shards and Ray Train writes checkpoints from whichever
node they run on; the driver then reads them back. A local ``output_uri`` is therefore only sound
when every such node sees the same disk as the driver. On one machine it does; on a multi-node
cluster it must be proven (a probe file every running node reads), and where the work will run on
nodes that do not exist yet (an autoscaler starts them), it cannot be: use ``s3://``.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from actors.errors import InputError
from pipelines.config import VideoGPAConfig

log = logging.getLogger(__name__)


def resource_demands(cfg: VideoGPAConfig) -> dict[str, dict[str, float]]:
    """What one actor or worker of each part of the run asks Ray for."""
    demands = {name: {"CPU": pool.num_cpus, "GPU": pool.num_gpus}
               for name, pool in (("generation_pool", cfg.generation_pool), ("scoring_pool", cfg.scoring_pool),
                                  ("encoding_pool", cfg.encoding_pool))}
    demands["trainer"] = {"CPU": cfg.trainer.cpus_per_worker, "GPU": 1.0 if cfg.trainer.use_gpu else 0.0}
    return demands


def _fits(demand: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(key, 0.0) >= amount for key, amount in demand.items() if amount > 0)


def check_output_shared(cfg: VideoGPAConfig) -> None:
    """Refuse, in one line, a local ``output_uri`` that the nodes doing the work may not see."""
    import ray

    if "://" in cfg.output_uri:
        return
    nodes = [n for n in ray.nodes() if n["Alive"]]
    here = ray.get_runtime_context().get_node_id()
    driver_node = next(n for n in nodes if n["NodeID"] == here)
    demands = resource_demands(cfg)
    if len(nodes) == 1 and all(_fits(d, driver_node["Resources"]) for d in demands.values()):
        return  # one machine: every process sees the driver's disk
    unplaced = {name: d for name, d in demands.items() if not any(_fits(d, n["Resources"]) for n in nodes)}
    if unplaced:
        name, demand = next(iter(unplaced.items()))
        asks = ", ".join(f"{k}: {v:g}" for k, v in demand.items() if v > 0)
        raise InputError(
            f"output_uri={cfg.output_uri!r} is a local path, but {name} needs {{{asks}}}, which no running node "
            "of this multi-node cluster has: it will run on nodes started later, whose disks are their own; "
            "use output_uri=s3://... (or a path every node mounts, with all nodes running)")
    _probe_nodes(cfg.output_uri, nodes)


def _probe_nodes(output_uri: str, nodes: list[dict]) -> None:
    """Write a probe file where the run will write, and have a task on every running node read it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(output_uri).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    probe = folder / f".videogpa-shared-probe-{token}"
    probe.write_text(token)

    @ray.remote(num_cpus=0)
    def sees(path: str, expected: str) -> bool:
        try:
            return Path(path).read_text() == expected
        except OSError:
            return False

    try:
        checks = {n["NodeID"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                  .remote(str(probe), token) for n in nodes}
        blind = [node for node, ref in checks.items() if not ray.get(ref)]
    finally:
        probe.unlink(missing_ok=True)
    if blind:
        raise InputError(
            f"output_uri={output_uri!r} is a local path that node {blind[0]} of this multi-node cluster does not "
            "see (it is not shared); use output_uri=s3://... or a path every node mounts")
    log.info("output_uri %s is shared by all %d running nodes (probe file read on each)", folder, len(nodes))
