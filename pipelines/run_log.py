"""Each command's full driver log, kept in its run as ``logs/<UTC time>-<command>.log``.

Everything the driver prints (its own log lines, Ray Data's progress, the lines Ray forwards from
actors and workers) goes to the terminal as before and to a local file too. Once the command knows
its run, the file is copied into it when the command ends, however it ends (short of SIGKILL), so a
failure can be diagnosed after the terminal is gone, also from S3; where the run cannot take it
(a full disk, a lost lease), the local file is kept and the last line names it. Tracebacks (the driver's, and
those Ray forwards from actors and workers) go to the file only unless ``--debug``: the terminal
gets one line that says what failed and where the log is.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import TextIO

from actors.errors import InputError
from pipelines.storage import RunStore

# A line Ray forwards from an actor or worker starts with its source, e.g. "(MapWorker(...) pid=12, ip=..)",
# in colour on a terminal.
_SOURCE = re.compile(r"^(?:\x1b\[[0-9;]*m)?\(.*? pid=\d+[^)]*\)(?:\x1b\[[0-9;]*m)? ?")


_FRAME = re.compile(r'^\s+File ".*", line \d+')
_CARETS = re.compile(r"^\s*[\^~]+\s*$")


class _TracebackFilter:
    """Drops Python traceback frames from text bound for the terminal (they stay in the log file):
    a "Traceback (most recent call last):" or '  File "...", line N' line and the indented lines
    after it, tracked per source of forwarded lines so that interleaved actors do not confuse it.
    The exception's own line stays."""

    def __init__(self) -> None:
        self._pending = ""
        self._inside: set[str] = set()

    def __call__(self, text: str) -> str:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        return "".join(line + "\n" for line in lines if self._keep(line))

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest if self._keep(rest) else ""

    def _keep(self, line: str) -> bool:
        match = _SOURCE.match(line)
        source, body = (match.group(0), line[match.end():]) if match else ("", line)
        if body.startswith("Traceback (most recent call last)") or _FRAME.match(body):
            self._inside.add(source)
            return False
        if _CARETS.match(body) or (source in self._inside and body[:1].isspace()):
            return False
        self._inside.discard(source)
        return True


class _Tee:
    """A text stream that writes to the log file and, through ``terminal_filter``, to the terminal."""

    def __init__(self, terminal: TextIO, file: TextIO, terminal_filter: _TracebackFilter | None):
        self._terminal, self._file, self._filter = terminal, file, terminal_filter

    def write(self, text: str) -> int:
        self._file.write(text)
        self._terminal.write(self._filter(text) if self._filter else text)
        return len(text)

    def flush(self) -> None:
        self._file.flush()
        self._terminal.flush()

    def finish(self) -> None:
        if self._filter:
            self._terminal.write(self._filter.flush())
        self.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self._terminal, name)


class RunLog:
    """Tees stdout and stderr into a local file from construction until :meth:`close`."""

    def __init__(self, command: str, stamp: str, tracebacks_on_terminal: bool = False):
        self.rel = f"logs/{stamp}-{command}.log"
        fd, self._path = tempfile.mkstemp(prefix=f"videogpa-{command}-", suffix=".log")
        self._file = os.fdopen(fd, "w+", encoding="utf-8")
        self._streams = sys.stdout, sys.stderr
        self._tees = [_Tee(stream, self._file, None if tracebacks_on_terminal else _TracebackFilter())
                      for stream in self._streams]
        sys.stdout, sys.stderr = self._tees
        self.store: RunStore | None = None

    def attach(self, store: RunStore) -> None:
        """The run this command works on: the log is saved there at the end."""
        self.store = store

    @property
    def planned_where(self) -> str:
        """Where :meth:`close` will put the log unless the run cannot take it."""
        return self.store.uri(self.rel) if self.store is not None else self._path

    def write_only_to_file(self, text: str) -> None:
        self._file.write(text)

    def close(self, keep_local: bool = False) -> SavedLog | None:
        """Save the log into the run; where the run's ``logs/`` cannot be written (a full disk, no
        permission, a lost lease), or without a run, keep the local file (without a run: only if
        ``keep_local``). Returns where the full log is; None: nowhere."""
        for tee in self._tees:
            tee.finish()
        sys.stdout, sys.stderr = self._streams
        self._file.seek(0)
        text = self._file.read()
        self._file.close()
        if self.store is not None:
            try:
                self.store.write_bytes(self.rel, text.encode("utf-8"))
            except (OSError, InputError) as err:
                with open(self._path, "a", encoding="utf-8") as local:
                    local.write(f"(not saved into the run: {str(err).splitlines()[0]})\n")
                return SavedLog(self._path, in_run=False)
            os.unlink(self._path)
            return SavedLog(self.store.uri(self.rel), in_run=True)
        if keep_local:
            return SavedLog(self._path, in_run=False)
        os.unlink(self._path)
        return None


@dataclass(frozen=True)
class SavedLog:
    where: str
    in_run: bool  # False: a local file (the run's logs/ could not be written, or there is no run)
