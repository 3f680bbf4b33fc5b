"""The server's data directory: where it is by default, and the lock that makes it one server's.

Holding an exclusive ``flock`` on ``mqroute.lock`` for the server's lifetime means a second
server started on the same directory refuses at once with a clear message, instead of two
processes writing one store.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from ..errors import DataDirError

LOCK_NAME = "mqroute.lock"


def default_data_dir() -> Path:
    """``$MQROUTE_DATA_DIR``, else ``$XDG_DATA_HOME/mqroute``, else ``~/.local/share/mqroute``."""
    explicit = os.environ.get("MQROUTE_DATA_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "mqroute"


class DataDirLock:
    """``with DataDirLock(path):`` creates the directory if needed and holds it exclusively."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> DataDirLock:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.path, 0o700)  # messages and (later) users live here: owner only
            fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DataDirError(f"cannot use data directory {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataDirError(
                f"data directory {self.path} is in use by another mqroute server (pid {holder}); "
                "stop it or choose another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
