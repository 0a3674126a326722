"""`ray job submit` of the real `videogpa align` to a real two-node, token-authenticated Ray cluster.

This is the laptop → cluster path of cluster/README.md, run locally: a head node (with the
dashboard / job API) and a second node started with `ray start` as separate processes, the
repository uploaded as the job's working_dir with cluster/runtime_env.yaml, the job driven
to SUCCEEDED through the Job API, and the run layout checked on disk.

Isolation from anything else running Ray on this machine (other tests, other users):
- every port is chosen free (two nodes on one host would otherwise collide on the fixed
  defaults: dashboard agent 52365, client server 10001, ...);
- each node has its own --temp-dir under tmp_path; the dashboard listens on 127.0.0.1 only;
- the token comes from RAY_AUTH_TOKEN in the environment of the processes this module
  starts: ~/.ray/auth_token is neither read nor written, and this pytest process's own
  environment is untouched (JobSubmissionClient gets the token as a header);
- teardown never runs `ray stop` (it kills every Ray process of the user): every process
  we start carries a unique marker variable in its environment, which Ray passes on to all
  it spawns (GCS, raylets, agents, workers, the job driver), and exactly those are killed.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.processes import MARKER_VAR, kill_marked as _kill_marked, marked_pids as _marked_pids

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV_FILE = REPO_ROOT / "cluster" / "runtime_env.yaml"
JOB_TIMEOUT_S = 8 * 60
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is picked, so the n ports are distinct.
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


class LocalRayCluster:
    """Head (2 CPUs, dashboard) + one worker node (1 CPU), started with the `ray` CLI."""

    def __init__(self, root: Path):
        self.root = root
        self.marker = uuid.uuid4().hex
        self.token = secrets.token_hex(32)  # what `ray get-auth-token --generate` makes, kept out of ~/.ray
        (self.gcs_port, self.dashboard_port, self.client_port,
         *self._node_ports) = _free_ports(3 + 2 * 6)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
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

    def _node_args(self, index: int) -> list[str]:
        agent, agent_grpc, runtime_env, metrics, node_manager, object_manager = self._node_ports[6 * index:6 * index + 6]
        return [
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.root / f'node{index}'}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            "--disable-usage-stats",
        ]

    def ray(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["ray", *args], env=self.env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"`ray {shlex.join(args)}` exited {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}")
        return proc

    def start(self) -> None:
        self.ray("start", "--head", f"--port={self.gcs_port}", "--num-cpus=2",
                 "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={self.dashboard_port}",
                 f"--ray-client-server-port={self.client_port}", *self._node_args(0))
        self.ray("start", f"--address={self.gcs_address}", "--num-cpus=1", *self._node_args(1))
        self._wait_for_nodes(2)

    def _wait_for_nodes(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                nodes = self.get_json("/nodes?view=summary")["data"]["summary"]
                alive = [n for n in nodes if n.get("raylet", {}).get("state") == "ALIVE"]
                if len(alive) >= count:
                    return
            except (OSError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the Ray cluster did not reach {count} alive nodes in {timeout_s}s")
            time.sleep(1)

    def get_json(self, path: str, token: str | None = "default") -> dict:
        request = urllib.request.Request(self.dashboard_url + path)
        token = self.token if token == "default" else token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def client(self):
        from ray.job_submission import JobSubmissionClient

        # The header, not os.environ: this pytest process may host other tests' Ray runtimes.
        return JobSubmissionClient(self.dashboard_url, headers={"Authorization": f"Bearer {self.token}"})

    def submit(self, entrypoint: list[str], submission_id: str) -> str:
        # The CLI path a user runs (cluster/README.md); --no-wait so the test drives the polling.
        self.ray("job", "submit", f"--address={self.dashboard_url}", f"--submission-id={submission_id}",
                 f"--runtime-env={RUNTIME_ENV_FILE}", f"--working-dir={REPO_ROOT}", "--no-wait",
                 "--", *entrypoint)
        return submission_id

    def wait(self, submission_id: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
        client = self.client()
        deadline = time.monotonic() + timeout_s
        status = None
        while time.monotonic() < deadline:
            status = str(client.get_job_status(submission_id).value)
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
        return _kill_marked(self.marker)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    # Short root: Ray's unix socket paths (sockets/plasma_store, raylet) must stay under 107 bytes.
    root = Path(tmp_path_factory.mktemp("rc", numbered=True))
    cluster = LocalRayCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        assert not left, f"processes of the test cluster survived teardown: {left}"
        # Visible check that nothing of ours remains, without looking at anyone else's processes.
        assert _marked_pids(cluster.marker) == []


def _run_job(cluster: LocalRayCluster, entrypoint: list[str], name: str) -> str:
    submission_id = f"{name}-{uuid.uuid4().hex[:8]}"
    cluster.submit(entrypoint, submission_id)
    status = cluster.wait(submission_id)
    logs = cluster.logs(submission_id)
    if status != "SUCCEEDED":
        pytest.fail(f"job {submission_id} ended {status}; its logs:\n{logs[-20000:]}")
    return logs


def test_cluster_requires_token_and_sees_both_nodes(ray_cluster):
    # Token auth is on: the job API refuses a request without the token, and a wrong one.
    for token in (None, "0" * 64):
        with pytest.raises(urllib.error.HTTPError) as info:
            ray_cluster.get_json("/api/jobs/", token=token)
        assert info.value.code in (401, 403)
    assert isinstance(ray_cluster.get_json("/api/jobs/"), list)

    # A job joins the cluster through RAY_ADDRESS (as `videogpa align` does) and sees both nodes.
    probe = ("import json, ray; ray.init(); "
             "print('PROBE', json.dumps({'cpus': ray.cluster_resources().get('CPU'), "
             "'nodes': sum(n['Alive'] for n in ray.nodes())}))")
    logs = _run_job(ray_cluster, [sys.executable, "-c", probe], "probe")
    line = next(line for line in logs.splitlines() if line.startswith("PROBE "))
    assert json.loads(line[len("PROBE "):]) == {"cpus": 3.0, "nodes": 2}


def test_videogpa_align_job_writes_round(ray_cluster, tmp_path):
    out = tmp_path / "out"
    entrypoint = ["videogpa", "align", "--config", "configs/quickstart.yaml",
                  f"output_uri={out}", "run_name=jobtest"]
    logs = _run_job(ray_cluster, entrypoint, "videogpa-align")

    round_dir = out / "jobtest" / "round-000"
    manifest = round_dir / "manifest.json"
    assert manifest.is_file(), f"no manifest in {round_dir}; job logs:\n{logs[-8000:]}"
    json.loads(manifest.read_text())  # written last, and whole
    assert sorted((round_dir / "pairs").glob("*.parquet")), f"no pair shards in {round_dir / 'pairs'}"
    assert (out / "jobtest" / "config.yaml").is_file()
