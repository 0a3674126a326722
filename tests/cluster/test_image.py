"""The image (cluster/Dockerfile) runs every recipe in configs/: each backend and tracking client a
recipe needs is installed, torch is pinned to the base image's CUDA, and the install lines that
package registries serve resolve in a fresh virtual environment."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import VideoGPAConfig, load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "cluster" / "Dockerfile"
RECIPES = sorted((REPO_ROOT / "configs").glob("*.yaml"))

# What each need is installed by: the package (the GFM backends' own, with --no-deps) and the
# project extra that brings what it imports.
_VGGT = re.compile(r"vggt @ https://github\.com/facebookresearch/vggt/archive/([0-9a-f]+)\.tar\.gz")


def run_commands(dockerfile: str) -> list[str]:
    """Each RUN instruction as one line, its ARGs replaced by their defaults."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.MULTILINE))
    joined = re.sub(r"\\\n", " ", dockerfile)
    runs = re.findall(r"^RUN\s+(.+)$", joined, re.MULTILINE)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], " ".join(r.split())) for r in runs]


def pip_installs(dockerfile: str) -> list[list[str]]:
    """The argument lists of every `pip install` in the RUN instructions."""
    found = []
    for command in run_commands(dockerfile):
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in ("&&", "||", ";", "|"):
                if words[:2] == ["pip", "install"]:
                    found.append(words[2:])
                words = []
            else:
                words.append(token)
    return found


def project_extras(dockerfile: str) -> set[str]:
    """The extras of the project install (`pip install ... ".[a,b]"`)."""
    extras: set[str] = set()
    for words in pip_installs(dockerfile):
        for word in words:
            match = re.fullmatch(r"\.\[([\w,-]+)\]", word)
            if match:
                extras.update(match.group(1).split(","))
    return extras


def image_provides(dockerfile: str) -> set[str]:
    """The needs the image meets: GFM backends (package and extra) and the tracking clients."""
    extras = project_extras(dockerfile)
    words = {w for args in pip_installs(dockerfile) for w in args}
    provided = {"tiny"} | ({"tracking"} & extras)
    vggt = [_VGGT.fullmatch(w) for w in words if _VGGT.fullmatch(w)]
    if vggt and all(len(m.group(1)) == 40 for m in vggt) and "vggt" in extras:  # a commit, not a branch
        provided.add("vggt")
    if any(w.startswith("depth-anything-3==") for w in words) and "da3" in extras:
        provided.add("da3")
    return provided


def recipe_needs(cfg: VideoGPAConfig) -> set[str]:
    needs = {cfg.scoring.backend}
    if cfg.evaluation.scoring is not None:
        needs.add(cfg.evaluation.scoring.backend)
    if cfg.tracking.mlflow.enabled or cfg.tracking.wandb.enabled:
        needs.add("tracking")
    return needs


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_the_image_runs_every_recipe(recipe):
    missing = recipe_needs(load_config(recipe)) - image_provides(DOCKERFILE.read_text(encoding="utf-8"))
    assert not missing, f"{recipe.name} needs {sorted(missing)}, which cluster/Dockerfile does not install"


def test_the_check_fails_where_the_image_lacks_a_need():
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert {"vggt", "da3", "tracking"} <= image_provides(dockerfile)
    without_vggt = re.sub(r'"vggt @ [^"]+"', "", dockerfile)
    assert "vggt" not in image_provides(without_vggt)
    assert "vggt" not in image_provides(dockerfile.replace("a288dd0f14786c93483e45524328726ab7b1b4ce", "main"))
    assert "tracking" not in image_provides(dockerfile.replace("tracking,", ""))
    cfg = load_config(REPO_ROOT / "configs" / "cogvideox-5b.yaml", ["tracking.wandb.enabled=true"])
    assert recipe_needs(cfg) == {"vggt", "da3", "tracking"}


def test_torch_is_pinned_to_the_base_images_cuda():
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", dockerfile, re.MULTILINE))
    cuda = re.fullmatch(r"rayproject/ray:[\d.]+-py3\d+-(cu\d+)", args["RAY_IMAGE"])
    assert cuda, f"the base image {args['RAY_IMAGE']} must name its CUDA build (-cuXXX), not -gpu"
    assert args["TORCH_CUDA"] == cuda.group(1), "torch must be built for the base image's CUDA"
    installs = pip_installs(dockerfile)
    first = next(i for i, a in enumerate(installs) if any(w.startswith("torch==") for w in a))
    assert f"https://download.pytorch.org/whl/{cuda.group(1)}" in installs[first]
    assert f"torch=={args['TORCH_VERSION']}+{cuda.group(1)}" in installs[first]
    # Every later install is held to that torch by the constraints file the torch step writes.
    later = [a for a in installs[first + 1:] if "--no-deps" not in a]
    assert later and all("/app/.torch-constraints.txt" in a for a in later), later


def _served_here(args: list[str]) -> bool:
    """Whether the package registries reached from here serve an install: not PyTorch's CUDA
    index, not a source repository."""
    return "--index-url" not in args and not any("://" in a for a in args)


@pytest.mark.image
def test_registry_install_lines_resolve_in_a_fresh_venv(tmp_path):
    """Each `pip install` of the Dockerfile that this machine's registries can serve, run with
    --dry-run in a new venv that sees the installed packages: every requirement, extra and pin
    resolves (torch's CUDA build and VGGT's source are fetched only where the image is built).
    Half a minute of resolving: .ci/run runs it apart from the suite (marker `image`)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    served = [a for a in pip_installs(DOCKERFILE.read_text(encoding="utf-8")) if _served_here(a)]
    assert len(served) >= 3, served  # the project with its extras, the GFM packages, the code
    for args in served:
        # The torch constraints file exists only in the image; --dry-run installs nothing.
        args = [a for i, a in enumerate(args) if a != "-c" and (i == 0 or args[i - 1] != "-c")]
        out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet", *args],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (args, out.stderr[-3000:])
