"""A run's workdir: checked, held by one writer, created, and its files written or refused in one line.

Process 0 holds `WorkdirLock` (an advisory `fcntl.flock` on WORKDIR/lock) from the moment it
finds the workdir until the run ends, so a second run on the same workdir is refused before it
writes anything. The kernel releases a flock when its process dies, so a lock left by a killed
run blocks nothing: the lock file's content (pid, host, start time) only names a live holder.
A write that fails (a full disk, a quota) becomes a `WriteError`: one line naming the file and
the OS error, which the command lines print without a traceback.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
import time

from rsojax.experiment.config import RESUMABLE, ExperimentConfig, UsageError
from rsojax.records import write_json

log = logging.getLogger(__name__)

LOCK = "lock"
CONFIG = "config.json"
# flock's answers on a file system that has no locks (Lustre mounted without -o flock, some FUSE)
_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)


class WriteError(Exception):
    """A file of the run could not be written (a full disk, a quota): the run stops, its newest
    good checkpoint intact, and resumes once the cause is fixed."""

    exit_status = 74  # EX_IOERR (sysexits.h): an input/output error, not a bad command


@contextlib.contextmanager
def writing(path: str):
    """Turns an `OSError` of the writes inside into a `WriteError` naming the file and the error.

    Args:
      path: the file written inside, named in the error where the `OSError` names none.

    Raises:
      WriteError: one line with the file, the OS's reason and what to do.
    """
    try:
        yield
    except OSError as e:
        where = e.filename or path
        raise WriteError(
            f"cannot write {where}: {e.strerror or e}; the newest checkpoint is intact: fix this "
            "(free space, for example) and rerun the same command to resume"
        ) from None


class WorkdirLock:
    """The advisory lock of one workdir, held by the run that writes it (process 0).

    `acquire` refuses at once, naming the holder, if another process holds it; `release`
    removes the lock file, so a workdir left by a finished or refused run holds no lock file.

    Args:
      workdir: the run's directory; the lock file is `workdir/lock`.
    """

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK)
        self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock (the workdir must exist); a no-op if this object holds it already.

        Raises:
          UsageError: another process holds it (naming its pid, host and start time), or the lock
            file cannot be written.
        """
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise UsageError(f"--workdir: {self.workdir} cannot be written ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise UsageError(
                    f"--workdir: {self.workdir} is in use by another run ({holder}); wait for it to end "
                    "or stop it, or use another --workdir"
                ) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in _NO_LOCKS:
                    raise UsageError(f"--workdir: {self.path} cannot be locked ({e.strerror})") from None
                log.warning("%s: the file system has no locks (%s): make sure no other run uses this workdir",
                            self.workdir, e.strerror)
                return
            # The previous holder removes the file when it releases: lock the file that is there now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            try:
                os.ftruncate(fd, 0)
                os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode())
            except OSError as e:
                os.close(fd)
                raise UsageError(f"--workdir: {self.workdir} cannot be written ({e.strerror})") from None
            self._fd = fd

    def release(self) -> None:
        """Removes the lock file and releases the lock (a no-op if not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0))
            return f"pid {info['pid']} on {info['host']}, since {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):  # the holder is writing it at this moment
            return "a process that is starting"


def check(workdir: str, config: ExperimentConfig, lock: WorkdirLock) -> None:
    """Refuses, writing nothing, a workdir that cannot be written, is in use or holds another run.

    An existing workdir is locked here (`lock`), before anything else is done with it.

    Raises:
      UsageError: naming `--workdir` and what is wrong.
    """
    existing = workdir
    while not os.path.exists(existing) and os.path.dirname(os.path.abspath(existing)) != os.path.abspath(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir: {workdir} cannot be written ({existing} is not a writable directory)")
    if os.path.isdir(workdir):
        lock.acquire()
        _check_config(workdir, config)


def create(workdir: str, config: ExperimentConfig, lock: WorkdirLock) -> None:
    """Makes the workdir, locks it and writes its `config.json` (unless it has one).

    The config is checked again under the lock: another run may have made the workdir since `check`.

    Raises:
      UsageError: the workdir cannot be written, is in use, or holds another run.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--workdir: {workdir} cannot be written ({e.strerror})") from None
    lock.acquire()
    _check_config(workdir, config)
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        try:
            write_json(path, dataclasses.asdict(config))
        except OSError as e:
            raise UsageError(f"--workdir: {workdir} cannot be written ({e.strerror})") from None


def _flat(saved: dict, prefix: str = "") -> dict:
    """A saved config flattened: {"rso": {"batch_size": 5000}} -> {"rso.batch_size": 5000}."""
    out = {}
    for k, v in saved.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out


def _check_config(workdir: str, config: ExperimentConfig) -> None:
    path = os.path.join(workdir, CONFIG)
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = _flat(json.load(f))
    except (OSError, ValueError, AttributeError) as e:
        raise UsageError(
            f"--workdir: {path} cannot be read ({type(e).__name__}: {e}); it holds the settings of the run "
            "to resume: write them back, or use a new --workdir"
        ) from None
    current = _flat(json.loads(json.dumps(dataclasses.asdict(config))))
    # A run saved before the runs settings existed is a single run: their empty values match it.
    saved |= {k: [] for k in ("seeds", "init_seeds") if k not in saved and current.get(k) == []}
    differ = sorted(k for k in saved.keys() | current.keys() if k.split(".")[-1] not in RESUMABLE and saved.get(k) != current.get(k))
    if differ:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ)
        raise UsageError(
            f"--workdir: {workdir} holds a run with another configuration ({changes}); "
            "use a new --workdir, or the saved settings to resume"
        )
