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
from typing import NamedTuple

try:  # POSIX only: the kernel lock that backs a core lease.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
try:  # POSIX only: user names for messages about other users' processes.
    import pwd
except ImportError:  # pragma: no cover - Windows
    pwd = None
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
    "TaskStat",
    "allowed_cpus",
    "bytes_waiting",
    "cpu_busy_seconds",
    "forget_in_forked_child",
    "get_thread_affinity",
    "host_flocks",
    "list_thread_ids",
    "loaded_libraries",
    "lock_exclusive",
    "main_thread_cpus",
    "probe_lock",
    "process_command",
    "process_ids",
    "process_uid",
    "read_task_stat",
    "set_thread_affinity",
    "share_lock",
    "started_at",
    "thread_affinities",
    "user_name",
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


#: ``PF_KTHREAD`` in a task's flags (``/proc/PID/stat``, field 9): a kernel thread, pinned to
#: its CPU by design and never a user's job.
_PF_KTHREAD = 0x00200000


class TaskStat(NamedTuple):
    """One task's line of ``/proc/PID[/task/TID]/stat``, the fields the host view reads:
    its scheduler ``state`` (``R`` runs or waits for a CPU), ``ppid``, whether it is a
    ``kernel`` thread, CPU ``ticks`` used (user + system) and when it ``started`` (clock
    ticks since boot, which orders processes by age)."""

    state: str
    ppid: int
    kernel: bool
    ticks: int
    started: int


def process_ids() -> list[int]:
    """Every process id on this host (Linux ``/proc``; none where the OS cannot list them)."""
    if not IS_LINUX:
        return []
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def read_task_stat(pid: int, tid: int | None = None) -> TaskStat | None:
    """A process's (or one of its threads') scheduler facts, or None if it has gone.

    Any user may read them for any process. The command name in the line may hold spaces
    and parentheses: the fields start after its last ``)``.
    """
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as file:
            line = file.read()
    except OSError:
        return None
    fields = line[line.rfind(b")") + 2 :].split()
    try:
        return TaskStat(
            state=fields[0].decode(),
            ppid=int(fields[1]),
            kernel=bool(int(fields[6]) & _PF_KTHREAD),
            ticks=int(fields[11]) + int(fields[12]),
            started=int(fields[19]),
        )
    except (IndexError, ValueError):
        return None


def process_uid(pid: int) -> int | None:
    """The user a process runs as (the owner of its ``/proc`` entry), None if it has gone."""
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


def process_command(pid: int, limit: int = 200) -> str:
    """A process's command line as one string, shortened to ``limit`` characters; its
    name in brackets where the command line is empty or unreadable (another user's, under
    ``hidepid``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            raw = file.read(limit * 4)
    except OSError:
        raw = b""
    text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
    if not text:
        try:
            with open(f"/proc/{pid}/comm", "rb") as file:
                text = f"[{file.read().decode(errors='replace').strip()}]"
        except OSError:
            text = "[?]"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cpu_busy_seconds(cpus: frozenset[int]) -> float | None:
    """Seconds ``cpus`` spent on anything but idling since boot, summed (``/proc/stat``:
    user, nice, system, irq, softirq, and steal, time the hypervisor gave elsewhere), in
    clock ticks (10 ms); None where unknown."""
    if not IS_LINUX:
        return None
    try:
        with open("/proc/stat", "rb") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, _, rest = line.partition(b" ")
        if name[:3] != b"cpu" or not name[3:].isdigit() or int(name[3:]) not in cpus:
            continue
        values = [int(value) for value in rest.split()]
        user, nice, system, _idle, _iowait, irq, softirq = values[:7]
        ticks += user + nice + system + irq + softirq + (values[7] if len(values) > 7 else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def started_at(ticks: int) -> float | None:
    """When a task that started ``ticks`` clock ticks after boot started (Unix time)."""
    try:
        with open("/proc/stat", "rb") as file:
            boot = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def user_name(uid: int | None) -> str:
    """A user's login name (``uid 1001`` where the host has no name for it)."""
    if uid is None:
        return "an unknown user"
    if pwd is None:
        return f"uid {uid}"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


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


def share_lock(fd: int) -> bool:
    """Take a shared flock on ``fd`` without waiting (it blocks nobody who shares it);
    return whether it was taken. Closing ``fd`` drops it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def host_flocks() -> list[tuple[tuple[int, int, int], int, str]]:
    """Every flock of the host, from Linux's ``/proc/locks`` (readable by every user):
    ``((major, minor, inode), pid, "READ"|"WRITE")``; empty where there is none."""
    try:
        with open("/proc/locks", "rb") as file:
            lines = file.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:567 0 EOF"; a waiter's line has "->" first.
        if len(parts) < 6 or parts[1] != "FLOCK" or parts[3] not in ("READ", "WRITE"):
            continue
        try:
            major, minor, inode = parts[5].split(":")
            found.append(((int(major, 16), int(minor, 16), int(inode)), int(parts[4]), parts[3]))
        except ValueError:
            continue
    return found


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
