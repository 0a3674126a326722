"""A directory copied between local disk and run storage (a local path or S3) through a pyarrow filesystem.

The one implementation for a round's LoRA directory wherever it moves: the trainer workers fetch
the previous round's and upload the new one, the generation actors (``pipelines.stages``) fetch
the policy they sample from. ``filesystem`` None means plain local paths; paths carry no scheme.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

import pyarrow.fs as pafs


@contextlib.contextmanager
def local_copy(path: str, filesystem: pafs.FileSystem | None) -> Iterator[str]:
    """A local directory holding the files of ``path``: ``path`` itself when the storage is local,
    else a temporary copy, removed on exit."""
    if filesystem is None or isinstance(filesystem, pafs.LocalFileSystem):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="videogpa-lora-") as local:
        pafs.copy_files(path, local, source_filesystem=filesystem, destination_filesystem=pafs.LocalFileSystem())
        yield local


def upload_dir(local: str, dest: str, filesystem: pafs.FileSystem | None) -> None:
    """Copy the files under the local directory ``local`` to ``dest`` on ``filesystem``."""
    if filesystem is None:
        if os.path.abspath(local) != os.path.abspath(dest):
            shutil.copytree(local, dest, dirs_exist_ok=True)
        return
    filesystem.create_dir(dest, recursive=True)
    pafs.copy_files(local, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)
