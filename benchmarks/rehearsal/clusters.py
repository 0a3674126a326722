"""Real multi-node Ray clusters on this one machine, for tests and benchmarks.

- :class:`StaticCluster`: a head and one worker node started with the `ray` CLI.
- :class:`AutoscalingCluster`: the KubeRay ``RayCluster`` of ``cluster/raycluster.yaml`` rehearsed
  with Ray's own autoscaler and its fake multi-node provider. The autoscaling config is derived
  from the manifest by the translator KubeRay's autoscaler runs (node groups, resources,
  upscaling mode, scale from 0); only the provider and the settings named in
  :data:`LOCAL_OVERRIDES` differ. Every node the autoscaler launches is a real raylet process.

Isolation from anything else running Ray on this machine (other tests, other users):
- every port the head takes is chosen free; each cluster has its own --temp-dir;
- every address is loopback: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` stops Ray from swapping
  127.0.0.1 for the machine's interface address (the fake provider's nodes follow it);
- Ray token auth, with the token in the environment of the processes started here only
  (~/.ray/auth_token is neither read nor written); clients pass it as a header;
- teardown never runs `ray stop` (it kills every Ray process of the user): every process
  started here carries a unique marker variable, which Ray passes on to all it spawns (GCS,
  raylets, agents, workers, the autoscaler and the nodes it launches, job drivers), and exactly
  those are killed. (``ray.cluster_utils.AutoscalingCluster`` is not used: it runs `ray stop`.)
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml
from ray._private import ray_constants
from ray._private.node import Node
from ray._private.parameter import RayParams
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_TYPE, FakeMultiNodeProvider
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler.tags import (
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from benchmarks.rehearsal.processes import MARKER_VAR, cmdline, kill_marked, marked_pids

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV_FILE = REPO_ROOT / "cluster" / "runtime_env.yaml"
RAYCLUSTER_MANIFEST = REPO_ROOT / "cluster" / "raycluster.yaml"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
NODE_ID_VAR = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # the fake provider gives each node's processes its id

# What the rehearsal changes from the manifest, and why: idle GPU pods go back after 10 minutes on
# Kubernetes, which no test can wait for; this machine holds 5 such nodes, not 8; each fake node
# would otherwise reserve 30% of this machine's memory for its object store. (Also: a fake node's
# `memory` resource is the machine's, since the fake provider takes no memory figure.)
LOCAL_OVERRIDES = {"idle_timeout_s": 15.0, "max_gpu_workers": 5, "object_store_memory": 256 * 2**20}


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (all sockets are held until every port is picked)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def _node_port_args(root: Path, index: int, ports: list[int]) -> list[str]:
    agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = ports
    return [
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={root / f'node{index}'}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        "--disable-usage-stats",
    ]


class _MarkedCluster:
    """What both clusters share: the marked, token-carrying environment, the `ray` CLI, the job API."""

    def __init__(self, root: Path):
        self.root = root
        self.marker = uuid.uuid4().hex
        self.token = secrets.token_hex(32)  # what `ray get-auth-token --generate` makes, kept out of ~/.ray
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        self.env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update({
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            MARKER_VAR: self.marker,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
        })

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _head_args(self) -> list[str]:
        return ["start", "--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={self.client_port}"]

    def ray(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ray", *args], env=self.env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"`ray {shlex.join(args)}` exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
        return proc

    def get_json(self, path: str, token: str | None = "default") -> Any:
        request = urllib.request.Request(self.dashboard_url + path)
        token = self.token if token == "default" else token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        """Alive nodes as the dashboard reports them: node_id, resources_total, is_head_node, ..."""
        nodes = self.get_json("/api/v0/nodes?limit=1000")["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if len(self.alive_nodes()) >= count:
                    return
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the Ray cluster did not reach {count} alive nodes in {timeout_s}s")
            time.sleep(1)

    def client(self):
        """One Job API client (each new one costs the dashboard a version handshake, and the
        scenarios poll job status twice a second)."""
        if getattr(self, "_client", None) is None:
            from ray.job_submission import JobSubmissionClient

            # The header, not os.environ: this process may host other tests' Ray runtimes.
            self._client = JobSubmissionClient(self.dashboard_url, headers={"Authorization": f"Bearer {self.token}"})
        return self._client

    def submit(self, entrypoint: list[str], submission_id: str) -> str:
        """`ray job submit` as cluster/README.md shows it (--no-wait: the caller polls)."""
        self.ray("job", "submit", f"--address={self.dashboard_url}", f"--submission-id={submission_id}",
                 f"--runtime-env={RUNTIME_ENV_FILE}", f"--working-dir={REPO_ROOT}", "--no-wait",
                 "--", *entrypoint)
        return submission_id

    def status(self, submission_id: str) -> str:
        return str(self.client().get_job_status(submission_id).value)

    def wait(self, submission_id: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            status = self.status(submission_id)
            if status in TERMINAL:
                return status
            time.sleep(2)
        return f"TIMEOUT (last status {status})"

    def logs(self, submission_id: str) -> str:
        try:
            return self.client().get_job_logs(submission_id)
        except Exception as err:  # noqa: BLE001 - diagnostics only
            return f"<could not read job logs: {err}>"

    def stop(self) -> list[int]:
        """Kill every process of this cluster; returns those that survived (should be none)."""
        return kill_marked(self.marker)


class StaticCluster(_MarkedCluster):
    """Head (2 CPUs, dashboard) + one worker node (1 CPU), started with the `ray` CLI."""

    def start(self) -> None:
        ports = free_ports(12)
        self.ray(*self._head_args(), "--num-cpus=2", *_node_port_args(self.root, 0, ports[:6]))
        self.ray("start", f"--address={self.gcs_address}", "--num-cpus=1",
                 *_node_port_args(self.root, 1, ports[6:]))
        self.wait_for_nodes(2)


def kuberay_autoscaling_config(cluster_spec: dict, name: str = "videogpa") -> dict:
    """The autoscaler config KubeRay's in-tree autoscaler derives from a RayCluster spec (Ray's own
    translator, as it runs in the autoscaler sidecar)."""
    ray_cr = {"kind": "RayCluster", "metadata": {"name": name, "namespace": "default"}, "spec": cluster_spec}
    return _derive_autoscaling_config_from_ray_cr(copy.deepcopy(ray_cr))


def manifest_cluster_spec(manifest: Path = RAYCLUSTER_MANIFEST) -> dict:
    return next(doc for doc in yaml.safe_load_all(manifest.read_text()) if doc and doc["kind"] == "RayCluster")["spec"]


def rehearsal_config(kuberay_config: dict, gcs_address: str, nodes_dir: str,
                     overrides: dict[str, float] = LOCAL_OVERRIDES) -> dict:
    """``kuberay_config`` on :class:`RehearsalNodeProvider` (nodes' temp dirs under ``nodes_dir``), with
    :data:`LOCAL_OVERRIDES` and without the CPU worker group; nothing else changed."""
    config = copy.deepcopy(kuberay_config)
    config["provider"] = {"type": "external", "module": f"{__name__}.RehearsalNodeProvider", "gcs_address": gcs_address,
                          "use_node_id_as_ip": True, "disable_node_updaters": True, "disable_launch_config_check": True,
                          "nodes_dir": nodes_dir}
    config["idle_timeout_minutes"] = overrides["idle_timeout_s"] / 60.0
    types = config["available_node_types"]
    # The fake provider tags its head with its own type name; under another, the autoscaler would launch one.
    types[FAKE_HEAD_NODE_TYPE] = types.pop(config["head_node_type"])
    config["head_node_type"] = FAKE_HEAD_NODE_TYPE
    # One machine has room for the GPU group only: the manifests' small CPU group is left out, so
    # CPU-only work runs on the GPU nodes' CPUs here (where a cluster would start a CPU pod).
    for name in [n for n, t in types.items() if n != FAKE_HEAD_NODE_TYPE and not t["resources"].get("GPU")]:
        del types[name]
    for name, node_type in types.items():
        node_type["resources"].pop("memory", None)
        if name == FAKE_HEAD_NODE_TYPE:
            continue
        node_type["max_workers"] = min(node_type["max_workers"], int(overrides["max_gpu_workers"]))
        node_type["resources"]["object_store_memory"] = int(overrides["object_store_memory"])
    config["max_workers"] = sum(t["max_workers"] for t in types.values())
    return config


class AutoscalingCluster(_MarkedCluster):
    """A head with no GPU (and, as in the manifest, no CPU for work) and the manifest's GPU worker
    group, launched from 0 by Ray's autoscaler as work asks for GPUs, and terminated when idle."""

    def __init__(self, root: Path, manifest: Path = RAYCLUSTER_MANIFEST, env: dict[str, str] | None = None):
        """``env``: what every pod of the manifest gets from its Secrets (e.g. S3 credentials); the
        nodes the autoscaler launches inherit it, as pods of the worker group would."""
        super().__init__(root)
        self.env.update(env or {})
        self.config = rehearsal_config(kuberay_autoscaling_config(manifest_cluster_spec(manifest)), self.gcs_address,
                                       str(root / "n"))
        self.head_type = self.config["head_node_type"]
        self.env.update({
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback everywhere (see the module docstring)
            # The autoscaler (in the head's monitor process) imports RehearsalNodeProvider from here.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        })

    def start(self) -> None:
        path = self.root / "autoscaling.yaml"
        path.write_text(yaml.safe_dump(self.config))
        head = self.config["available_node_types"][self.head_type]["resources"]
        ports = free_ports(6)
        self.ray(*self._head_args(), f"--num-cpus={int(head.get('CPU', 0))}", f"--num-gpus={int(head.get('GPU', 0))}",
                 f"--autoscaling-config={path}", *_node_port_args(self.root, 0, ports))
        self.wait_for_nodes(1)

    def gpu_nodes(self) -> list[str]:
        """Ids of the alive nodes that have a GPU."""
        return sorted(n["node_id"] for n in self.alive_nodes() if n["resources_total"].get("GPU", 0) > 0)

    def alive_actors(self) -> list[dict]:
        """Alive actors: class_name, repr_name, node_id, pid, ..."""
        return self.get_json("/api/v0/actors?limit=10000&detail=1&filter_keys=state&filter_predicates=%3D"
                             "&filter_values=ALIVE")["data"]["result"]["result"]

    def wait_until(self, predicate, timeout_s: float, what: str, every_s: float = 1.0) -> float:
        """Poll ``predicate()`` until it holds; the seconds it took."""
        start = time.monotonic()
        while True:
            try:
                if predicate():
                    return time.monotonic() - start
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() - start > timeout_s:
                raise AssertionError(f"{what}: not within {timeout_s:.0f}s")
            time.sleep(every_s)

    def kill_node(self, node_id: str) -> list[int]:
        """SIGKILL one worker node whole, as a preempted spot instance: its raylet and every process
        under it (agents, workers, actors). The autoscaler and GCS find out the way they would."""
        raylets = [pid for pid in marked_pids(self.marker) if _environ_has(pid, f"{NODE_ID_VAR}={node_id}")
                   and "raylet/raylet" in cmdline(pid)]
        if not raylets:
            raise AssertionError(f"no raylet of node {node_id} among this cluster's processes")
        victims = _with_descendants(raylets)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return victims


class RehearsalNodeProvider(FakeMultiNodeProvider):
    """Ray's fake multi-node provider, with each node in a temp dir of its own (as on its own disk).

    The fake provider's nodes share the head's session directory. A runtime_env agent unpacks a job's
    working_dir afresh the first time its node serves the job, so a node joining mid-run replaced the
    directory that the other nodes' workers were running in, and they failed (getcwd: no such file).
    """

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        resources = dict(resources)
        with self.lock:
            node_type = tags[TAG_RAY_USER_NODE_TYPE]
            node_id = self._next_hex_node_id()
            params = RayParams(
                node_ip_address="127.0.0.1",
                temp_dir=os.path.join(self.provider_config["nodes_dir"], node_id[-5:]),
                min_worker_port=0, max_worker_port=0, dashboard_agent_listen_port=0,
                num_cpus=resources.pop("CPU", 0), num_gpus=resources.pop("GPU", 0),
                object_store_memory=resources.pop("object_store_memory", None),
                resources=resources, labels=labels,
                redis_address=self._gcs_address, gcs_address=self._gcs_address,
                env_vars={NODE_ID_VAR: node_id, "RAY_CLOUD_INSTANCE_ID": node_id, "RAY_NODE_TYPE_NAME": node_type,
                          ray_constants.RESOURCES_ENVIRONMENT_VARIABLE: json.dumps(resources),
                          ray_constants.LABELS_ENVIRONMENT_VARIABLE: json.dumps(labels)},
            )
            node = Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False)
            self._nodes[node_id] = {
                "tags": {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: node_type,
                         TAG_RAY_NODE_NAME: node_id, TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE, **tags},
                "node": node,
            }


class Timeline:
    """Samples, every ``every_s`` in a thread, the GPU nodes and each actor pool's actors with their nodes."""

    def __init__(self, cluster: AutoscalingCluster, pools: dict[str, str], every_s: float = 1.0):
        self.cluster, self.pools, self.every_s = cluster, pools, every_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def __enter__(self) -> Timeline:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def sample(self) -> dict:
        actors = self.cluster.alive_actors()
        return {
            "t": round(time.monotonic() - self._t0, 2),
            "gpu_nodes": self.cluster.gpu_nodes(),
            "actors": {pool: sorted(a["node_id"] for a in actors
                                    if title in f"{a.get('class_name') or ''} {a.get('repr_name') or ''}")
                       for pool, title in self.pools.items()},
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except (OSError, KeyError, ValueError):
                pass  # the dashboard is busy or restarting: skip this sample
            self._stop.wait(self.every_s)

    def latest(self) -> dict:
        return self.samples[-1] if self.samples else {"gpu_nodes": [], "actors": {p: [] for p in self.pools}}


def _environ_has(pid: int, entry: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry.encode() in f.read().split(b"\0")
    except OSError:
        return False


def _with_descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], list(roots)
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out
