"""The project's documentation stands alone: README.md, docs/ and cluster/ link nothing outside the
repository, and every link inside it resolves."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md")),
        *sorted((REPO_ROOT / "cluster").rglob("*"))]
# Hosts a command in the docs talks to, not pages they link: loopback and reserved example names.
_LOCAL_HOSTS = re.compile(r"^(127\.0\.0\.1|localhost|\[::1\]|.*\.example(\.\w+)?|example\.\w+)$")
_BUILD_SOURCES = {"Dockerfile"}  # install sources of the image (a package index, a pinned repository)


def outside_links(path: Path, text: str) -> list[str]:
    found = []
    base = path.parent
    for target in re.findall(r"\]\(([^)\s]+)\)", text):  # markdown links and images
        if target.startswith("#"):
            continue
        if "://" in target or target.startswith("mailto:"):
            found.append(target)
            continue
        resolved = (base / target.split("#", 1)[0]).resolve()
        if not resolved.is_relative_to(REPO_ROOT) or not resolved.exists():
            found.append(target)
    if path.name not in _BUILD_SOURCES:
        for url in re.findall(r"https?://[^\s)`'\"<>]+", text):
            if not _LOCAL_HOSTS.match(urlparse(url).hostname or ""):
                found.append(url)
    found += re.findall(r"(?<![\w.])\.\./[\w./-]+", text)  # a path that leaves the repository
    return found


def test_no_doc_links_outside_the_repository():
    problems = {}
    for path in DOCS:
        if path.is_file():
            bad = outside_links(path, path.read_text(encoding="utf-8"))
            if bad:
                problems[str(path.relative_to(REPO_ROOT))] = bad
    assert problems == {}


def test_the_check_finds_outside_links(tmp_path):
    doc = REPO_ROOT / "docs" / "x.md"
    assert outside_links(doc, "see `../shared/SPEC.md` and [it](../../shared/SPEC.md)") == \
        ["../../shared/SPEC.md", "../shared/SPEC.md", "../../shared/SPEC.md"]
    assert outside_links(doc, "[paper](https://arxiv.org/abs/1) and [gone](nowhere.md)") == \
        ["https://arxiv.org/abs/1", "nowhere.md", "https://arxiv.org/abs/1"]
    assert outside_links(doc, "[c](CONTRACTS.md#cli) http://127.0.0.1:8265 https://minio.example:9000") == []
