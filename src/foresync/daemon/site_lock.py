"""One process at a time on a site's metadata: an exclusive ``flock`` on the meta directory.

``foresync run`` takes it at start and keeps it for its whole life, across role switches; the
kernel releases it when the process exits, however it exits (kill -9 included), so a stale lock
never blocks a restart. Every command that changes the metadata without the daemon (``promote``
and ``resolve`` when the admin API does not answer, ``init``) takes it too, and fails at once,
changing nothing, if it is held: the CLI falling back to "offline" only proves that nothing
answered on the admin address of *its* config, not that no daemon runs (a config with another
admin port, a firewall, a daemon too busy to answer).

The lock is on the directory itself (an fd opened with ``O_DIRECTORY``), not on a file in it, so
deleting a file cannot defeat it. Who holds it is written to ``<meta>/lock`` (pid, command,
admin address) for the error message only: the file can be stale (a killed holder); the flock
is the truth.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType

from foresync.errors import ConfigError, SiteInUse

OWNER_FILE = "lock"


def _describe_holder(meta_dir: str) -> str:
    try:
        with open(os.path.join(meta_dir, OWNER_FILE)) as handle:
            fields = dict(line.split(" ", 1) for line in handle.read().splitlines() if " " in line)
    except (OSError, ValueError):
        return "holder unknown"
    parts = [f"pid {fields['pid']}"] if "pid" in fields else []
    if "command" in fields:
        parts.append(fields["command"])
    if fields.get("admin"):
        parts.append(f"admin API at {fields['admin']}")
    return ", ".join(parts) or "holder unknown"


class SiteLock:
    """The held lock; ``release()`` (or leaving the ``with``) gives it up."""

    def __init__(self, meta_dir: str, fd: int) -> None:
        self.meta_dir = meta_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, meta_dir: str, command: str, admin: str = "") -> SiteLock:
        """Take the lock or raise ``SiteInUse`` naming its holder; ``command`` and ``admin``
        describe us to whoever finds it held."""
        try:
            fd = os.open(meta_dir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise ConfigError(f"no site metadata in {meta_dir}: run `foresync init` first") from None
        except OSError as exc:
            raise ConfigError(f"cannot open the site metadata directory {meta_dir}: "
                              f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SiteInUse(meta_dir, _describe_holder(meta_dir)) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock the site metadata directory {meta_dir}: "
                              f"{exc.strerror or exc}") from None
        lock = cls(meta_dir, fd)
        lock._write_owner(command, admin)
        return lock

    def _write_owner(self, command: str, admin: str) -> None:
        path = os.path.join(self.meta_dir, OWNER_FILE)
        try:
            with open(path, "w") as handle:
                handle.write(f"pid {os.getpid()}\ncommand {command}\nadmin {admin}\n")
        except OSError as exc:
            self.release()
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only fd of this open file releases the flock
            self._fd = None

    def __enter__(self) -> SiteLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
