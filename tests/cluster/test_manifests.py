"""Static checks of cluster/: the KubeRay manifests, runtime_env, Dockerfile and example Secrets.

No Kubernetes here, so these pin what a cluster would otherwise only reveal at apply time or,
worse, in production: versions that drift from pyproject.toml, a RayJob entrypoint the CLI
rejects, a container without the Ray token (it cannot join the cluster), a credential
written into a manifest, or a dashboard exposed outside the cluster.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER = REPO_ROOT / "cluster"
RAY_API = "ray.io/v1"
KNOWN_KINDS = {"RayCluster": RAY_API, "RayJob": RAY_API, "Secret": "v1"}
SENSITIVE = re.compile(r"secret|password|passwd|credential|access_?key|api_?key|token(?!iz)", re.IGNORECASE)
# Keys that name or point at a Secret rather than hold one.
REFERENCE_KEYS = {"secretName", "secretKeyRef", "secretRef"}
PLACEHOLDER = re.compile(r"^<[^<>]+>$")


# ---------------------------------------------------------------------------------------------
# loading


def _yaml_files() -> list[Path]:
    return sorted(CLUSTER.glob("*.yaml")) + sorted(CLUSTER.glob("*.yml"))


def _load_all() -> list[tuple[Path, dict]]:
    docs = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((path, doc))
    return docs


DOCS = _load_all()
MANIFESTS = [(p, d) for p, d in DOCS if isinstance(d, dict) and "kind" in d]


def _of_kind(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in MANIFESTS if d["kind"] == kind]


def _cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: standalone ones and those embedded in RayJobs."""
    specs = [(f"{p.name}:{d['metadata']['name']}", d["spec"]) for p, d in _of_kind("RayCluster")]
    specs += [(f"{p.name}:{d['metadata']['name']}", d["spec"]["rayClusterSpec"])
              for p, d in _of_kind("RayJob") if "rayClusterSpec" in d["spec"]]
    return specs


def _pod_specs(cluster_spec: dict) -> Iterator[tuple[str, dict]]:
    yield "head", cluster_spec["headGroupSpec"]["template"]["spec"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group["template"]["spec"]


def _ray_containers() -> list[tuple[str, dict]]:
    """Containers that run Ray processes or talk to the cluster: head, workers, submitters."""
    out = []
    for where, spec in _cluster_specs():
        for role, pod in _pod_specs(spec):
            for c in pod.get("containers", []) + pod.get("initContainers", []):
                out.append((f"{where} {role} container {c['name']}", c))
        # KubeRay adds the autoscaler container to the head pod; its env comes from here.
        if spec.get("enableInTreeAutoscaling"):
            out.append((f"{where} autoscaler", spec.get("autoscalerOptions") or {}))
    for p, job in _of_kind("RayJob"):
        submitter = job["spec"].get("submitterPodTemplate")
        if submitter:
            for c in submitter["spec"]["containers"]:
                out.append((f"{p.name} submitter container {c['name']}", c))
    return out


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def _pyproject() -> dict:
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _pinned_ray_version() -> str:
    """The lower bound of `ray[...]>=X` in [project] dependencies, as a full x.y.z version."""
    for dep in _pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"\s*ray(\[[^\]]*\])?\s*>=\s*([0-9]+(?:\.[0-9]+)*)\s*(,.*)?", dep)
        if m:
            parts = m.group(2).split(".")
            return ".".join((parts + ["0", "0"])[:3])
    raise AssertionError("pyproject.toml has no `ray[...]>=X` dependency")


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, key, value) for every mapping entry, depth first; list items get [i] paths."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _walk(item, f"{path}[{i}]")


# ---------------------------------------------------------------------------------------------
# shape


def test_every_yaml_parses_and_the_expected_files_exist():
    names = {p.name for p in _yaml_files()}
    assert {"raycluster.yaml", "rayjob-offline.yaml", "rayjob-online.yaml", "runtime_env.yaml",
            "secrets.example.yaml"} <= names
    assert (CLUSTER / "Dockerfile").is_file() and (CLUSTER / "README.md").is_file()
    for path in _yaml_files():
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
        assert docs, f"{path.name} is empty"


def test_kinds_and_api_versions():
    for path, doc in MANIFESTS:
        assert doc["kind"] in KNOWN_KINDS, f"{path.name}: unexpected kind {doc['kind']}"
        assert doc["apiVersion"] == KNOWN_KINDS[doc["kind"]], f"{path.name}: {doc['kind']} apiVersion"
        assert doc.get("metadata", {}).get("name"), f"{path.name}: {doc['kind']} without a name"
    by_file = {p.name: [d["kind"] for p2, d in MANIFESTS if p2 == p] for p, _ in MANIFESTS}
    assert by_file["raycluster.yaml"] == ["RayCluster"]
    assert by_file["rayjob-offline.yaml"] == ["RayJob"]
    assert by_file["rayjob-online.yaml"] == ["RayJob"]
    assert set(by_file["secrets.example.yaml"]) == {"Secret"}
    # runtime_env.yaml is not a manifest: it is what `ray job submit --runtime-env` reads.
    assert all(p.name != "runtime_env.yaml" for p, _ in MANIFESTS)


def test_autoscaling_gpu_group_scales_from_zero():
    specs = _cluster_specs()
    assert len(specs) == 3  # the RayCluster and the two RayJobs' clusters
    for where, spec in specs:
        assert spec.get("enableInTreeAutoscaling") is True, where
        assert isinstance(spec.get("autoscalerOptions"), dict), where
        gpu_groups = []
        for group in spec["workerGroupSpecs"]:
            limits = [c.get("resources", {}).get("limits", {}) for c in group["template"]["spec"]["containers"]]
            if any(int(lim.get("nvidia.com/gpu", 0)) >= 1 for lim in limits):
                gpu_groups.append(group)
        assert gpu_groups, f"{where}: no worker group with an nvidia.com/gpu limit"
        for group in gpu_groups:
            assert group["minReplicas"] == 0, f"{where}: GPU group must scale to zero"
            assert group["maxReplicas"] >= 1, where
            assert 0 <= group.get("replicas", 0) <= group["maxReplicas"], where
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{where}: no GPU toleration"


def test_every_cluster_autoscales_as_the_rehearsal_cluster():
    """Ray's KubeRay translator (what the autoscaler sidecar runs) gives every manifest's cluster the
    same autoscaler settings, and the rehearsal cluster of tests/e2e/test_elastic.py runs exactly them
    but for the declared LOCAL_OVERRIDES (idle timeout, GPU node count, object store size)."""
    from benchmarks.rehearsal.clusters import (
        LOCAL_OVERRIDES,
        kuberay_autoscaling_config,
        manifest_cluster_spec,
        rehearsal_config,
    )

    reference = kuberay_autoscaling_config(manifest_cluster_spec())
    for where, spec in _cluster_specs():
        derived = kuberay_autoscaling_config(spec)
        for key in ("available_node_types", "upscaling_speed", "idle_timeout_minutes", "max_workers", "head_node_type"):
            assert derived[key] == reference[key], (where, key)
    gpu = reference["available_node_types"]["gpu"]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1
    cpu = reference["available_node_types"]["cpu"]  # CPU-only work starts no GPU pod
    assert cpu["min_workers"] == 0 and cpu["resources"].get("GPU", 0) == 0 and cpu["max_workers"] <= 2
    assert reference["available_node_types"]["headgroup"]["resources"].get("GPU", 0) == 0
    assert reference["available_node_types"]["headgroup"]["resources"]["CPU"] == 0

    rehearsal = rehearsal_config(reference, "127.0.0.1:1", "/tmp/nodes")
    assert rehearsal["provider"]["module"] == "benchmarks.rehearsal.clusters.RehearsalNodeProvider"
    assert rehearsal["upscaling_speed"] == reference["upscaling_speed"]
    assert rehearsal["idle_timeout_minutes"] * 60 == LOCAL_OVERRIDES["idle_timeout_s"]
    assert "cpu" not in rehearsal["available_node_types"]  # one machine: the GPU group only
    local_gpu = rehearsal["available_node_types"]["gpu"]
    assert local_gpu["min_workers"] == gpu["min_workers"] == 0
    assert local_gpu["max_workers"] == min(gpu["max_workers"], LOCAL_OVERRIDES["max_gpu_workers"])
    assert {k: v for k, v in local_gpu["resources"].items() if k != "object_store_memory"} == \
        {k: v for k, v in gpu["resources"].items() if k != "memory"}


def test_head_runs_no_work_and_is_not_exposed():
    for where, spec in _cluster_specs():
        head = spec["headGroupSpec"]
        # A string: KubeRay passes rayStartParams through as `--num-cpus=0`.
        assert head["rayStartParams"].get("num-cpus") == "0", where
        assert head.get("serviceType", "ClusterIP") == "ClusterIP", where
        assert spec.get("enableIngress", False) is False, where
        if "headService" in head:
            assert head["headService"].get("spec", {}).get("type", "ClusterIP") == "ClusterIP", where


def test_no_public_service_anywhere():
    for path, doc in DOCS:
        assert not (isinstance(doc, dict) and doc.get("kind") in {"Ingress", "Route", "Gateway"}), path.name
        for where, key, value in _walk(doc):
            if key in ("type", "serviceType") and value in ("LoadBalancer", "NodePort"):
                pytest.fail(f"{path.name}{where}.{key}: {value} would expose the cluster")
            assert key != "nodePort", f"{path.name}{where}: nodePort"


# ---------------------------------------------------------------------------------------------
# secrets


def test_ray_token_auth_on_every_container():
    containers = _ray_containers()
    assert len(containers) >= 3 * 3  # head, GPU worker and autoscaler of each of the three clusters
    for where, container in containers:
        env = _env(container)
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE=token missing"
        token = env.get("RAY_AUTH_TOKEN")
        assert token is not None, f"{where}: RAY_AUTH_TOKEN missing"
        assert "value" not in token, f"{where}: RAY_AUTH_TOKEN must not be a literal"
        ref = token.get("valueFrom", {}).get("secretKeyRef")
        assert ref and ref.get("name") and ref.get("key"), f"{where}: RAY_AUTH_TOKEN must come from a secretKeyRef"
    for where, spec in _cluster_specs():
        # The operator must know the token too (RayJob status polling, submitter pods).
        auth = spec.get("authOptions", {})
        assert auth.get("mode") == "token", where
        refs = {(_env(c)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"],
                 _env(c)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["key"])
                for w, c in containers if w.startswith(where.split(":")[0])}
        assert refs == {(auth["secretName"], "auth_token")}, f"{where}: token Secret references disagree"


def test_s3_credentials_come_only_from_secrets():
    example_secrets = {d["metadata"]["name"]: d for _, d in _of_kind("Secret")}
    for where, spec in _cluster_specs():
        for role, pod in _pod_specs(spec):
            for container in pod["containers"]:
                env = _env(container)
                for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                    assert name in env, f"{where} {role}: {name} missing (the job reads/writes S3)"
                    assert "value" not in env[name], f"{where} {role}: {name} is a literal"
                    ref = env[name]["valueFrom"]["secretKeyRef"]
                    secret = example_secrets.get(ref["name"])
                    assert secret is not None, f"{where}: Secret {ref['name']} not in secrets.example.yaml"
                    assert ref["key"] in secret.get("stringData", secret.get("data", {})), where
    # And the Ray token Secret is documented with the key KubeRay's authOptions expects.
    for _, spec in _cluster_specs():
        secret = example_secrets.get(spec["authOptions"]["secretName"])
        assert secret is not None and "auth_token" in secret["stringData"]


def test_no_literal_credentials_anywhere():
    def check(tree: Any, origin: str) -> None:
        for where, key, value in _walk(tree):
            loc = f"{origin}{where}.{key}"
            # env entries: {name: SOMETHING_SECRET, value: "..."} is a literal credential.
            if key == "name" and isinstance(value, str) and SENSITIVE.search(value):
                parent = _lookup(tree, where)
                if isinstance(parent, dict) and "value" in parent:
                    pytest.fail(f"{loc}: {value} has a literal value; use valueFrom.secretKeyRef")
            # mappings like env_vars / stringData: SOMETHING_SECRET: "literal".
            if (isinstance(key, str) and SENSITIVE.search(key) and key not in REFERENCE_KEYS
                    and isinstance(value, (str, int, float)) and str(value).strip()):
                pytest.fail(f"{loc}: literal value for a credential-like key")

    for path, doc in DOCS:
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            # The example Secrets hold placeholders only.
            for key, value in {**doc.get("stringData", {}), **doc.get("data", {})}.items():
                assert PLACEHOLDER.match(str(value)), f"{path.name}: {key} is not a <placeholder>"
            continue
        check(doc, path.name)
        for where, key, value in _walk(doc):
            if key == "runtimeEnvYAML":  # a YAML document inside a string: scan it as well
                check(yaml.safe_load(value), f"{path.name}{where}.runtimeEnvYAML")
    # Belt and braces on the raw text (comments included): no AWS key ids, no hex tokens.
    for path in sorted(CLUSTER.iterdir()):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{path.name}: AWS key id"
            # (a source pin, ARG <NAME>_COMMIT=<git commit>, is the one 40-hex string that is no secret)
            text = re.sub(r"^ARG \w+_COMMIT=[0-9a-f]{40}$", "", text, flags=re.MULTILINE)
            assert not re.search(r"\b[0-9a-fA-F]{32,}\b", text), f"{path.name}: token-like hex string"


def _lookup(tree: Any, where: str) -> Any:
    node = tree
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", where):
        key, index = part
        node = node[int(index)] if index else node[key]
    return node


# ---------------------------------------------------------------------------------------------
# versions


def test_images_and_ray_version_agree_with_pyproject():
    version = _pyproject()["project"]["version"]
    ray_version = _pinned_ray_version()
    images = [(w, c["image"]) for w, c in _ray_containers() if "image" in c]
    assert len(images) >= 3 * 2 + 2  # head + worker per cluster, plus two submitters
    for where, image in images:
        assert image.rsplit("/", 1)[-1] == f"videogpa:{version}", f"{where}: image {image}"
    for where, spec in _cluster_specs():
        assert spec["rayVersion"] == ray_version, f"{where}: rayVersion {spec['rayVersion']} != {ray_version}"

    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.MULTILINE))
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert froms, "Dockerfile has no FROM"
    base = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], froms[-1])
    repo, _, tag = base.partition(":")
    assert repo == "rayproject/ray", base
    assert tag.split("-")[0] == ray_version, f"Dockerfile base {base} is not Ray {ray_version}"
    assert re.search(r"-py3\d+", tag) and tag.endswith(("-gpu", "-cu121", "-cu124", "-cu128")), base


def test_dockerfile_installs_the_package_as_a_non_root_user():
    dockerfile = (CLUSTER / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"pip install --no-cache-dir[^\n]*\s\.(\s|$)", dockerfile)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert re.search(r"^COPY\b", dockerfile, re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# jobs


def _rayjobs() -> dict[str, dict]:
    return {p.name: d for p, d in _of_kind("RayJob")}


@pytest.mark.parametrize("filename, rounds", [("rayjob-offline.yaml", 1), ("rayjob-online.yaml", 3)])
def test_rayjob_entrypoint_is_a_real_videogpa_command(filename, rounds):
    from pipelines.cli import build_parser

    entrypoint = _rayjobs()[filename]["spec"]["entrypoint"]
    argv = shlex.split(entrypoint)
    assert argv[0] == "videogpa", entrypoint
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit as err:  # argparse reports and exits on a bad command line
        pytest.fail(f"{filename}: `{entrypoint}` is rejected by the CLI (exit {err.code})")
    assert args.command == "align"
    overrides = dict(o.split("=", 1) for o in args.overrides)
    assert overrides.get("output_uri", "").startswith("s3://"), overrides
    assert int(overrides["rounds"]) == rounds
    # The config must exist in the repository: working_dir is the repository (image /app).
    config = REPO_ROOT / args.config
    assert config.is_file(), f"{filename}: {args.config} does not exist in the repository"
    # And config + overrides must validate, as `videogpa align` would do first on the cluster.
    from pipelines.config import load_config

    cfg = load_config(config, args.overrides)
    assert cfg.rounds == rounds and cfg.output_uri == overrides["output_uri"]


@pytest.mark.parametrize("filename", ["rayjob-offline.yaml", "rayjob-online.yaml"])
def test_rayjob_lifecycle_and_runtime_env(filename):
    from ray.runtime_env import RuntimeEnv

    spec = _rayjobs()[filename]["spec"]
    assert spec["shutdownAfterJobFinishes"] is True  # free the GPUs when the job ends
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    # working_dir is a path inside the image (the submitter uploads it): it must be the
    # Dockerfile's WORKDIR, where the repository is copied. Ray validates the other fields.
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (CLUSTER / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    assert runtime_env["working_dir"] == workdirs[-1]
    RuntimeEnv(**{k: v for k, v in runtime_env.items() if k != "working_dir"})
    assert "HF_HOME" in runtime_env["env_vars"]
    assert all(isinstance(v, str) for v in runtime_env["env_vars"].values())


def test_runtime_env_file_for_ray_job_submit():
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text(encoding="utf-8"))
    RuntimeEnv(**runtime_env)
    assert runtime_env["working_dir"] == "."
    excludes = runtime_env["excludes"]
    assert any(e.rstrip("/") == "runs" for e in excludes), "run outputs must not be uploaded"
    assert any(e.rstrip("/") == ".git" for e in excludes), ".git must not be uploaded"
    assert "pip" not in runtime_env, "the image has the package; per-job pip installs cost minutes"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in runtime_env.get("env_vars", {}).items())


def test_gpu_type_selected_agrees_with_the_pools_gpu_memory():
    """Each GPU group selects a card type (GPU Feature Discovery's product label) with at least the
    memory the job's recipe plans its pools for (`*_pool.gpu_memory_gib`)."""
    from pipelines.config import load_config

    jobs = {f"{p.name}:{d['metadata']['name']}": shlex.split(d["spec"]["entrypoint"]) for p, d in _of_kind("RayJob")}
    for where, spec in _cluster_specs():
        argv = jobs.get(where, ["videogpa", "align", "--config", "configs/cogvideox-5b.yaml"])
        cfg = load_config(REPO_ROOT / argv[argv.index("--config") + 1])
        planned = max(p.gpu_memory_gib for p in (cfg.text_pool, cfg.generation_pool, cfg.scoring_pool,
                                                 cfg.encoding_pool) if p.num_gpus > 0)
        for group in spec["workerGroupSpecs"]:
            pod = group["template"]["spec"]
            gpus = [int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"]]
            if not any(gpus):
                assert not pod.get("nodeSelector", {}).get("nvidia.com/gpu.product"), where
                continue
            product = pod.get("nodeSelector", {}).get("nvidia.com/gpu.product")
            assert product, f"{where} {group['groupName']}: no nvidia.com/gpu.product nodeSelector"
            memory = re.search(r"-(\d+)GB\b", product)
            assert memory and int(memory.group(1)) >= planned, f"{where}: {product} has less than {planned} GiB"


@pytest.mark.parametrize("how", ["rayignore", "excludes"])
def test_working_dir_upload_leaves_out_venvs_runs_and_caches(tmp_path, how):
    """Ray's own packaging of a checkout (what `ray job submit` uploads): a virtual environment, run
    outputs and caches stay out, through .rayignore (newer clients) or runtime_env.yaml's excludes."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    checkout = tmp_path / "checkout"
    for rel in ("venv/lib/torch.so", ".venv/bin/python", "runs/quickstart/a.mp4", ".cache/videogpa/m.bin",
                "actors/__pycache__/x.pyc", "configs/quickstart.yaml", "actors/models.py"):
        (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
        (checkout / rel).write_text("x")
    excludes: list[str] = []
    if how == "rayignore":
        (checkout / ".rayignore").write_text((REPO_ROOT / ".rayignore").read_text())
    else:
        excludes = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())["excludes"]
    create_package(str(checkout), tmp_path / "pkg.zip", include_gitignore=False, excludes=excludes)
    files = {n for n in zipfile.ZipFile(tmp_path / "pkg.zip").namelist() if not n.endswith("/")}
    assert files - {".rayignore"} == {"configs/quickstart.yaml", "actors/models.py"}, files
    ignored = (REPO_ROOT / ".gitignore").read_text().split()
    assert {"venv/", ".venv/", "runs/"} <= set(ignored)
