"""Every operating-system difference pinbackend cares about, decided in this one module.

The rest of the package asks this module what the OS can do (capability flags computed once
at import, without side effects) and calls its small functions; nothing else looks at
``sys.platform``, probes ``os`` for affinity support or imports ``fcntl`` or ``termios``.
"""

from __future__ import annotations

import errno
import os
import re
import select
import struct
import sys
import threading
import time

try:  # POSIX only: the kernel lock that backs a core lease.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # POSIX only: FIONREAD, how many bytes a pipe holds.
    import termios
except ImportError:  # pragma: no cover - Windows
    termios = None

__all__ = [
    "CAN_LOCK_FILES",
    "CAN_SET_AFFINITY",
    "IS_LINUX",
    "SAFE_OPEN_FLAGS",
    "AffinityUnavailable",
    "allowed_cpus",
    "bytes_waiting",
    "forget_in_forked_child",
    "get_thread_affinity",
    "list_thread_ids",
    "loaded_libraries",
    "lock_exclusive",
    "main_thread_cpus",
    "probe_lock",
    "set_thread_affinity",
    "thread_affinities",
    "wait_for_exit",
]

IS_LINUX = sys.platform.startswith("linux")
#: ``sched_setaffinity`` exists (Linux, some BSDs); macOS has no affinity API at all.
CAN_SET_AFFINITY = hasattr(os, "sched_setaffinity") and hasattr(os, "sched_getaffinity")
#: ``flock`` exists: leases are possible.
CAN_LOCK_FILES = fcntl is not None and hasattr(fcntl, "flock")
#: ``open()`` flags for lease and job files: never follow a planted symlink, never leak the
#: descriptor into exec'd programs, never block on a FIFO. POSIX only (0 elsewhere, where
#: leases are refused before any file is opened).
SAFE_OPEN_FLAGS = (
    getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
)


class AffinityUnavailable(OSError):
    """This OS or container does not let us set CPU affinity (macOS, EPERM, seccomp)."""


def allowed_cpus() -> frozenset[int]:
    """Return the CPUs the calling thread may run on (all CPUs where the OS cannot tell)."""
    if CAN_SET_AFFINITY:
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def main_thread_cpus() -> frozenset[int]:
    """Return the CPUs this process's main thread may run on (what its pools size by).

    On Linux the main thread's id is the process id; elsewhere, the calling thread's CPUs.
    """
    if CAN_SET_AFFINITY and IS_LINUX:
        try:
            return frozenset(os.sched_getaffinity(os.getpid()))
        except OSError:
            pass
    return allowed_cpus()


def list_thread_ids(pid: int | str = "self") -> list[int]:
    """Return the kernel thread ids of a process (Linux ``/proc/<pid>/task``).

    Elsewhere only the calling thread is known, so that is all this returns for ``"self"``.
    """
    if IS_LINUX:
        return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    if pid in ("self", os.getpid()):
        return [threading.get_native_id()]
    raise AffinityUnavailable(f"cannot list the threads of process {pid} on {sys.platform}")


def set_thread_affinity(tid: int, cpus: frozenset[int]) -> None:
    """Pin one thread (Linux: ``sched_setaffinity`` takes a thread id) to ``cpus``.

    Raises :class:`AffinityUnavailable` where the OS has no affinity or forbids it (EPERM),
    and ``ProcessLookupError`` if the thread has exited meanwhile.
    """
    if not CAN_SET_AFFINITY:
        raise AffinityUnavailable(f"{sys.platform} has no CPU affinity API")
    try:
        os.sched_setaffinity(tid, cpus)
    except PermissionError as error:
        raise AffinityUnavailable(f"not allowed to set CPU affinity here: {error}") from error
    except OSError as error:
        if error.errno == errno.ESRCH:
            raise ProcessLookupError(tid) from error
        raise


def get_thread_affinity(tid: int) -> frozenset[int]:
    """Return the CPUs one thread may run on."""
    if not CAN_SET_AFFINITY:
        raise AffinityUnavailable(f"{sys.platform} has no CPU affinity API")
    return frozenset(os.sched_getaffinity(tid))


def thread_affinities(pid: int | str = "self") -> dict[int, frozenset[int]]:
    """Return every thread's allowed CPUs for a process (thread ids from ``/proc``, Linux).

    ``sched_getaffinity`` takes any thread id of the host. Threads that exit while we read
    are skipped. Used for diagnostics and to verify pinning.
    """
    result = {}
    for tid in list_thread_ids(pid):
        try:
            result[tid] = get_thread_affinity(tid)
        except (ProcessLookupError, FileNotFoundError):
            continue
        except OSError as error:
            if error.errno != errno.ESRCH:
                raise
    return result


#: A mapped file's path in a ``/proc/self/maps`` line: after the inode, from the first "/".
_MAPS_PATH = re.compile(rb"^\S+ \S+ \S+ \S+ [1-9]\d* +(/.*)$", re.MULTILINE)


def loaded_libraries() -> frozenset[str] | None:
    """Return the paths of the shared libraries mapped into this process, or None if unknown.

    Linux reads ``/proc/self/maps``, which takes no lock of the dynamic loader's: asking the
    loader itself (``dl_iterate_phdr``) runs a callback under its lock, and a Python callback
    there deadlocks against a thread that imports an extension module (it holds the GIL
    inside ``dlopen``). About 1-3 ms with numpy, SciPy and scikit-learn loaded. Elsewhere
    there is no lock-free way to ask, so callers get None and must assume anything loaded.
    """
    if not IS_LINUX:
        return None
    try:
        with open("/proc/self/maps", "rb") as maps:
            text = maps.read()
    except OSError:
        return None
    return frozenset(
        os.fsdecode(path) for path in _MAPS_PATH.findall(text) if b".so" in path.rsplit(b"/", 1)[-1]
    )


def forget_in_forked_child(forget) -> None:
    """Call ``forget()`` in every child this process forks (POSIX; a no-op elsewhere)."""
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=forget)


def bytes_waiting(file) -> int:
    """Bytes waiting to be read in the pipe or socket ``file`` (a descriptor, or an object
    with ``fileno()``): ``ioctl(FIONREAD)``. 0 where that cannot be read (a closed file, an
    OS without it)."""
    if fcntl is None or termios is None:
        return 0
    try:
        fd = file if isinstance(file, int) else file.fileno()
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
    except (OSError, ValueError):
        return 0


def lock_exclusive(fd: int) -> bool:
    """Try to take the kernel lock on ``fd`` without waiting; return whether we got it.

    ``flock`` locks belong to the open file description: the kernel drops them when the last
    descriptor closes, including when the holder is killed (SIGKILL too), and two separate
    ``open()`` calls exclude each other even inside one process.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def probe_lock(fd: int) -> bool:
    """Return whether some other open file description holds the lock on ``fd``'s file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def wait_for_exit(pid: int) -> None:
    """Block until process ``pid`` has exited.

    Linux 5.3+ gives a pidfd that becomes readable when the process ends (no polling);
    elsewhere, poll about once a second.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        time.sleep(1.0)
