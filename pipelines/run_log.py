"""Each command's full driver log, kept in its run as ``logs/<UTC time>-<command>.log``.

Everything the driver prints (its own log lines, Ray Data's progress, the lines Ray forwards from
actors and workers) goes to the terminal as before and to a local file too. Once the command knows
its run, the file is copied into it when the command ends, however it ends (short of SIGKILL), so a
failure can be diagnosed after the terminal is gone, also from S3; where the run cannot take it
(a full disk, a lost lease), the local file is kept and the last line names it. Tracebacks (the driver's, and
those Ray forwards from actors and workers) go to the file only unless ``--debug``: the terminal
gets one line that says what failed and where the log is. A line Ray forwards that repeats an earlier
forwarded line (a library's warning per batch, per actor) goes to the file only too: "repeats" means
the same text up to quoted, bracketed and parenthesized parts, wherever in the cluster it came from.
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
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The parts of a line that vary between repeats of one message: quoted values, [lists], (groups), {dicts}.
_VARYING = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\[\]]*\]|\([^()]*\)|\{[^{}]*\}")


def _shape(body: str) -> str:
    """A forwarded line's text with what varies between repeats of its message replaced (nested
    brackets from the inside out)."""
    shape = _ANSI.sub("", body).strip()
    while True:
        collapsed = _VARYING.sub("…", shape)
        if collapsed == shape:
            return shape
        shape = collapsed


class _TerminalFilter:
    """Drops from text bound for the terminal (the log file keeps it all):
    - Python traceback frames, unless ``tracebacks``: a "Traceback (most recent call last):" or
      '  File "...", line N' line and the indented lines after it, tracked per source of forwarded
      lines so that interleaved actors do not confuse it. The exception's own line stays.
    - a forwarded line whose :func:`_shape` an earlier forwarded line had (repeated warnings)."""

    def __init__(self, tracebacks: bool = False, shown: set[int] | None = None) -> None:
        self._tracebacks = tracebacks
        self._pending = ""
        self._inside: set[str] = set()
        # hashes of the shapes of the forwarded lines shown (shared by stdout's and stderr's filters)
        self._shown = shown if shown is not None else set()

    def __call__(self, text: str) -> str:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        shown = "".join(line + "\n" for line in lines if self._keep(line))
        if "\r" in self._pending and not _SOURCE.match(self._pending):
            # a progress bar the driver redraws in place (Ray Data's on a terminal): shown as it comes
            shown, self._pending = shown + self._pending, ""
        return shown

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return rest if self._keep(rest) else ""

    def _keep(self, line: str) -> bool:
        match = _SOURCE.match(line)
        source, body = (match.group(0), line[match.end():]) if match else ("", line)
        if not self._tracebacks and not self._keep_traceback_line(source, body):
            return False
        if not source or not body.strip():
            return True
        shape = hash(_shape(body))
        if shape in self._shown:
            return False
        self._shown.add(shape)
        return True

    def _keep_traceback_line(self, source: str, body: str) -> bool:
        if body.startswith("Traceback (most recent call last)") or _FRAME.match(body):
            self._inside.add(source)
            return False
        if _CARETS.match(body) or (source in self._inside and body[:1].isspace()):
            return False
        self._inside.discard(source)
        return True


class _Tee:
    """A text stream that writes to the log file and, through ``terminal_filter``, to the terminal."""

    def __init__(self, terminal: TextIO, file: TextIO, terminal_filter: _TerminalFilter):
        self._terminal, self._file, self._filter = terminal, file, terminal_filter

    def write(self, text: str) -> int:
        self._file.write(text)
        self._terminal.write(self._filter(text))
        return len(text)

    def flush(self) -> None:
        self._file.flush()
        self._terminal.flush()

    def finish(self) -> None:
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
        shown: set[int] = set()
        self._tees = [_Tee(stream, self._file, _TerminalFilter(tracebacks_on_terminal, shown))
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
