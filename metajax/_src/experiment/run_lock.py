"""One writer per run directory: a lock file holding the writer's process id."""

from __future__ import annotations

import os
import socket
from pathlib import Path


class RunLockedError(RuntimeError):
    """Another live process is writing to the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Holds ``directory/.lock`` while a run writes there (a context manager).

    The lock records the process id and host. Entering it when a live process on this host
    holds it raises :class:`RunLockedError`; a lock left by a process that no longer exists
    (a killed run) is recognised as stale and taken over.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with RunLock(d):
        ...     try:
        ...         RunLock(d).__enter__()
        ...     except RunLockedError as err:
        ...         print("refused")
        refused
    """

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / ".lock"
        self._mine = False

    def __enter__(self) -> RunLock:
        me = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise RunLockedError(
                        f"{self.path.parent} is being written by another metajax process (pid "
                        f"{holder}); wait for it to end or stop it, then run again.") from None
                self.path.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._mine = True
            return self
        raise RunLockedError(f"Could not take the lock {self.path}.")

    def _holder(self) -> int | None:
        """The live process holding the lock, or ``None`` if the lock is stale."""
        try:
            pid_text, _, host = self.path.read_text().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            return None  # unreadable or half-written: treat as stale
        if host.strip() and host.strip() != socket.gethostname():
            return pid  # another machine's process: cannot tell, assume alive
        return pid if _alive(pid) else None  # this process too, while it holds it

    def check_free(self) -> None:
        """Raises :class:`RunLockedError` if a live process holds the lock (takes nothing)."""
        if self.path.is_file() and (holder := self._holder()) is not None:
            raise RunLockedError(
                f"{self.path.parent} is being written by another metajax process (pid "
                f"{holder}); wait for it to end or stop it, then run again.")

    def __exit__(self, *exc) -> None:
        if self._mine:
            self.path.unlink(missing_ok=True)
            self._mine = False
