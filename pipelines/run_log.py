"""Each command's full driver log, kept in its run as ``logs/<UTC time>-<command>.log``.

Everything the driver prints (its own log lines, Ray Data's progress, the lines Ray forwards from
actors and workers) goes to the terminal as before and to a local file too. Once the command knows
its run, the file is copied into it when the command ends, however it ends (short of SIGKILL), so a
failure can be diagnosed after the terminal is gone, also from S3. Tracebacks of failures go to the
file only: the terminal gets one line that says where the log is.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import TextIO

from pipelines.storage import RunStore


class _Tee:
    """A text stream that writes to the terminal's stream and to the log file."""

    def __init__(self, terminal: TextIO, file: TextIO):
        self._terminal, self._file = terminal, file

    def write(self, text: str) -> int:
        self._file.write(text)
        return self._terminal.write(text)

    def flush(self) -> None:
        self._file.flush()
        self._terminal.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self._terminal, name)


class RunLog:
    """Tees stdout and stderr into a local file from construction until :meth:`close`."""

    def __init__(self, command: str, stamp: str):
        self.rel = f"logs/{stamp}-{command}.log"
        fd, self._path = tempfile.mkstemp(prefix=f"videogpa-{command}-", suffix=".log")
        self._file = os.fdopen(fd, "w+", encoding="utf-8")
        self._streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, self._file), _Tee(sys.stderr, self._file)
        self.store: RunStore | None = None

    def attach(self, store: RunStore) -> None:
        """The run this command works on: the log is saved there at the end."""
        self.store = store

    @property
    def where(self) -> str:
        return self.store.uri(self.rel) if self.store is not None else self._path

    def write_only_to_file(self, text: str) -> None:
        self._file.write(text)

    def close(self, keep_local: bool = False) -> None:
        """Save the log into the run; without a run, keep the local file only if ``keep_local``."""
        sys.stdout, sys.stderr = self._streams
        self._file.seek(0)
        text = self._file.read()
        self._file.close()
        if self.store is not None:
            self.store.write_bytes(self.rel, text.encode("utf-8"))
        if self.store is not None or not keep_local:
            os.unlink(self._path)
