"""Where a run's work lands on the Ray cluster, checked on the driver before any pool starts.

Pool actors write videos, Ray Data writes shards and Ray Train writes checkpoints from whichever
node they run on; the driver then reads them back. A local ``output_uri`` is therefore only sound
when every such node sees the same disk as the driver. On one machine it does; on a multi-node
cluster it must be proven (a probe file every running node reads), and where the work will run on
nodes that do not exist yet (an autoscaler starts them), it cannot be: use ``s3://``.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path

from actors.errors import InputError
from pipelines.config import VideoGPAConfig

log = logging.getLogger(__name__)


def resource_demands(cfg: VideoGPAConfig) -> dict[str, dict[str, float]]:
    """What one actor or worker of each part of the run asks Ray for."""
    demands = {name: {"CPU": pool.num_cpus, "GPU": pool.num_gpus}
               for name, pool in (("text_pool", cfg.text_pool), ("generation_pool", cfg.generation_pool),
                                  ("scoring_pool", cfg.scoring_pool), ("encoding_pool", cfg.encoding_pool))}
    demands["trainer"] = {"CPU": cfg.trainer.cpus_per_worker, "GPU": 1.0 if cfg.trainer.use_gpu else 0.0}
    return demands


# The config key to change where each part's demand cannot be met, and which commands run each part.
DEMAND_KEYS = {"text_pool": "text_pool.num_gpus", "generation_pool": "generation_pool.num_gpus",
               "scoring_pool": "scoring_pool.num_gpus", "encoding_pool": "encoding_pool.num_gpus",
               "trainer": "trainer.use_gpu"}
# The text pool runs where prompts may still need encoding (a run made before the text stage: pairs too).
PARTS_OF = {"align": ("text_pool", "generation_pool", "scoring_pool", "encoding_pool", "trainer"),
            "generate": ("text_pool", "generation_pool", "scoring_pool"), "score": ("scoring_pool",),
            "pairs": ("text_pool", "encoding_pool"), "train": ("trainer",),
            "evaluate": ("text_pool", "generation_pool", "scoring_pool")}


def _fits(demand: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(key, 0.0) >= amount for key, amount in demand.items() if amount > 0)


def _slots(demand: dict[str, float], resources: dict[str, float]) -> int:
    """How many actors of ``demand`` fit on a node with ``resources``."""
    asked = [(key, amount) for key, amount in demand.items() if amount > 0]
    if not asked:
        return 1 << 30
    return min(int(math.floor(resources.get(key, 0.0) / amount + 1e-9)) for key, amount in asked)


def _asks(demand: dict[str, float]) -> str:
    """A pool's resource ask as its error lines show it: "CPU: 1, GPU: 1"."""
    return ", ".join(f"{k}: {v:g}" for k, v in demand.items() if v > 0)


def _needed(cfg: VideoGPAConfig, part: str) -> int:
    """Actors or workers of ``part`` that must run at once for its work to start."""
    return cfg.trainer.num_workers if part == "trainer" else getattr(cfg, part).min_size


def cluster_can_grow(started_here: bool) -> bool:
    """Whether an autoscaler may add nodes to the cluster this driver joined.

    Ray has no public call for this. Autoscaler v2 (KubeRay's) reports its node groups to the GCS,
    where Ray Data reads them too; the v1 monitor reports a status whose node types, on a cluster
    started by `ray start` without an autoscaling config, are the read-only provider's mirrors of
    the running nodes (``node_<id>``): such a cluster never grows. Where it cannot be told, yes.
    """
    if started_here:
        return False
    import ray._private.state
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    config = ray._private.state.state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return any(g.max_count == -1 or g.max_count > g.min_count for g in config.node_group_configs if g.max_count)
    status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    if not status:
        return True
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    mirrors = {format_readonly_node_type(node) for node in mapping}
    return not mapping or not set(mapping.values()) <= mirrors


def check_resources(cfg: VideoGPAConfig, command: str, started_here: bool) -> None:
    """Refuse, in one line, work that no node of a cluster that cannot grow could ever run (it would
    wait forever): an actor no node fits, or fewer places than the actors that must start together."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    demands = resource_demands(cfg)
    short = []
    for part in PARTS_OF[command]:
        places = sum(_slots(demands[part], node) for node in nodes)
        if places < _needed(cfg, part):
            short.append((part, places))
    if not short or cluster_can_grow(started_here):
        if short:
            log.info("%s waits for the autoscaler to add nodes it fits on", ", ".join(p for p, _ in short))
        return
    part, places = short[0]
    asks = _asks(demands[part])
    totals = {k: sum(n.get(k, 0.0) for n in nodes) for k in ("CPU", "GPU")}
    raise InputError(
        f"{DEMAND_KEYS[part]}: {part} needs {_needed(cfg, part)} × {{{asks}}}, but this Ray cluster "
        f"({len(nodes)} node(s), {totals['CPU']:g} CPU, {totals['GPU']:g} GPU) has room for {places} and cannot add "
        "nodes (no autoscaler); lower the request or run on a cluster that has or can add such nodes")


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
        needs = "; ".join(f"{name} needs {{{_asks(d)}}}" for name, d in unplaced.items())
        raise InputError(
            f"output_uri={cfg.output_uri!r} is a local path, but {needs}, which no running node of this multi-node "
            "cluster has: they will run on nodes started later, whose disks are their own; "
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
