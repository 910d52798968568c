"""``pinbackend run``: run any command on a leased core set (the pseudo-daemon's tool).

The command replaces this process (``exec``), keeping its pid, so the lease lives exactly as
long as the command, the exit code is the command's own, and signals reach it directly. The
slot is applied as in every pool worker (:func:`~pinbackend.host.slot.apply_slot`, in this
process's own right); of what it sets, the command and its children inherit the CPU mask and
the thread-cap environment variables. Nothing is undone: the exec ends this process, and its
end releases the lease.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import warnings

from .._docs import troubleshooting
from ..core.cpuset import format_cpu_list
from ..core.planner import PlanError
from ..host.leases import Lease
from ..host.lifecycle import claim_exact, lease_slot, move_once
from ..host.machine import read_topology
from ..host.options import OptionsError, PinOptions, spelled
from ..host.pinning import PinningError
from ..host.policy import COMMAND_LINE
from ..host.registry import LeaseError
from ..host.slot import apply_slot
from ._common import (
    UsageError,
    check_cores_allowed,
    cpu_list,
    declared_arguments,
    fail,
    positive_int,
)

HELP = "run a command on a leased set of cores (held for the command's lifetime)"

#: ``run``'s own defaults: it fails at once where the cores are held, unless told to wait.
_RUN_DEFAULTS = {"claim_timeout": 0.0}


def add_parser(subparsers) -> None:
    """Register the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help=HELP,
        description=HELP + ". The command inherits the CPU mask and thread caps "
        "(OMP/OPENBLAS/MKL/... _NUM_THREADS = its number of CPUs).",
        usage="%(prog)s [--cores LIST | -n K] [options] -- COMMAND [ARGS...]",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--cores", type=cpu_list, metavar="LIST", help="exactly these CPUs")
    which.add_argument(
        "-n",
        "--n-cores",
        type=positive_int,
        metavar="K",
        help="let the planner pick K free physical cores (default: 1)",
    )
    for flags, keywords in declared_arguments(PinOptions.declared(), "run", _RUN_DEFAULTS):
        parser.add_argument(*flags, **keywords)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Lease the cores, pin, set the caps and ``exec`` the command."""
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("run needs a command: pinbackend run [--cores LIST | -n K] -- COMMAND [ARGS...]")
    executable = _find(command[0])
    name = " ".join(command)
    lease = _lease(args, name)
    if lease.info.shared:
        warnings.warn(
            f"sharing CPUs {format_cpu_list(lease.info.shared)} with another lease "
            f"({spelled('oversubscribe', 'share', command_line=True)}): "
            f"expect both jobs to slow down. See {troubleshooting('cores-held-by-another-lease')}",
            stacklevel=1,
        )
    job_cpus = read_topology().allowed
    try:
        applied = apply_slot(lease.cores, lease=lease, own_process=True)
        avoid = args.other_pins != "ignore" and not lease.info.shared
        if avoid and args.cores is None and lease.info.scope == "":
            lease, applied = move_once(lease, applied, job_cpus, lambda: _lease(args, name))
    except PinningError as error:
        fail(str(error))
    env = dict(os.environ)  # with the slot's variables (slot_env), as apply_slot set them
    for fd in lease.fds():
        os.set_inheritable(fd, True)
    _exec(executable, command, env)
    return 127  # not reached: _exec replaces this process or exits


def _find(name: str) -> str:
    """The file ``name`` runs, found as a shell finds it; where none can run, exit with a
    shell's status: 127 when nothing of that name exists, 126 when it exists but cannot be
    executed (not executable, a directory)."""
    executable = shutil.which(name)
    if executable is not None:
        return executable
    if "/" in name:
        found = [name] if os.path.exists(name) else []
    else:
        path = os.environ.get("PATH", os.defpath).split(os.pathsep)
        found = [f for f in (os.path.join(d or ".", name) for d in path) if os.path.exists(f)]
    if not found:
        if "/" in name:
            fail(f"no such file: {name!r}; check the path", status=127)
        fail(f"command not found: {name!r}; check its name, or give its path", status=127)
    if os.path.isdir(found[0]):
        fail(f"cannot run {found[0]!r}: it is a directory; name a program", status=126)
    fail(
        f"cannot run {found[0]!r}: permission denied (it is not executable by you); make it "
        f"executable (chmod +x) or run it through its interpreter",
        status=126,
    )


def _exec(executable: str, command: list[str], env: dict[str, str]) -> None:
    """``execve``, with a shell's fallback and statuses where it fails."""
    try:
        os.execve(executable, command, env)
    except OSError as error:
        if error.errno == errno.ENOEXEC:
            # A script without '#!': run it with /bin/sh, as shells, env and taskset do
            # (POSIX execvp).
            try:
                os.execve("/bin/sh", ["/bin/sh", executable, *command[1:]], env)
            except OSError as sh_error:
                error = sh_error
        if error.errno == errno.ENOENT:  # the file is there: its interpreter is not
            fail(
                f"cannot run {executable!r}: the interpreter its '#!' line names (or a "
                f"library it needs) was not found; fix that line or install it",
                status=127,
            )
        fail(f"cannot run {executable!r}: {error.strerror}", status=126)


def _lease(args: argparse.Namespace, command: str) -> Lease:
    """The lifecycle's claim: exactly ``--cores``, or ``-n K`` cores it plans."""
    try:
        options = PinOptions(**{name: getattr(args, name) for name in PinOptions.names("run")})
        if args.cores is not None:
            check_cores_allowed(args.cores, read_topology().allowed)
            return claim_exact(args.cores, options, command=command)
        return lease_slot(args.n_cores or 1, options, command=command, spelling=COMMAND_LINE)
    except (UsageError, OptionsError, LeaseError, PlanError) as error:
        fail(str(error))
