"""Several hosts on one machine for tests: network namespaces on a private bridge.

Each host is a network namespace with one address in a private test range
(``10.213.N.0/24``, N picked free on this machine). The first host holds the bridge
(``br0``, its address ``.1``); every other host is joined to it by a veth pair, and so is
the test's own (root) namespace, through one veth ``pbt<pid>`` with the address ``.254``, so
that the test process reaches every host directly::

    with network("sched", "host-a", "host-b") as net:
        net.hosts["host-a"].address          # "10.213.N.11"
        subprocess.Popen([*net.hosts["host-a"].prefix(), "dask", "worker", ...])

A command started with :meth:`Host.prefix` runs in its host's network namespace
(``nsenter --net``) and in a UTS namespace of its own whose hostname is the host's name, so
``socket.gethostname()`` differs per host, as on real machines. ``ip netns exec`` is not used:
it remounts ``/sys`` in a private mount namespace, which hides ``/sys/fs/cgroup`` from the
command (pinbackend reads its CPU budget there, and cgroups cannot be joined from inside).
To put a command into a cgroup too, put the cgroup's prefix first (it joins, then ``exec``s).

On exit the namespaces are deleted, which destroys every veth (the root end with its peer);
the caller must have ended the processes inside first. Namespaces left by a killed run
(their pid is gone) are deleted by the next one. :func:`network` skips the test, with the
reason, where namespaces cannot be made (not root, no ``ip``/``nsenter``/``unshare``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

__all__ = ["Host", "NetnsUnavailable", "Network", "network"]

_PREFIX = "pbt-"  # namespace names: pbt-<pid>-<host>
_RANGE = "10.213"  # the private test range; never any other address
_TOOLS = ("ip", "nsenter", "unshare")


class NetnsUnavailable(RuntimeError):
    """No network namespaces can be made here; the message says why."""


@dataclass(frozen=True)
class Host:
    """One host: its name (also its hostname), network namespace and address."""

    name: str
    netns: str
    address: str

    def prefix(self) -> list[str]:
        """Words to put before a command so that it runs on this host."""
        return [
            *("nsenter", f"--net=/run/netns/{self.netns}"),
            *("unshare", "--uts", "/bin/sh", "-c", 'hostname "$0" && exec "$@"', self.name),
        ]


@dataclass
class Network:
    """The hosts made by :func:`network`, and the test's own address on their bridge."""

    subnet: str
    gateway: str  # the root namespace's address on the bridge
    hosts: dict[str, Host] = field(default_factory=dict)


def _ip(*args: str, timeout: float = 10) -> str:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")
    return result.stdout


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _sweep() -> None:
    """Delete namespaces left by earlier runs whose process is gone (best effort)."""
    with contextlib.suppress(NetnsUnavailable, subprocess.TimeoutExpired):
        for name in _namespaces():
            match = re.fullmatch(rf"{_PREFIX}(\d+)-.+", name)
            if match and not psutil.pid_exists(int(match[1])):
                _ip("netns", "del", name)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of the test range that no address or route on this machine touches."""
    used = _ip("-o", "addr") + _ip("route") + _ip("-4", "route", "show", "table", "all")
    first = os.getpid() % 200 + 20
    for step in range(250):
        third = (first + step) % 250 + 1
        if f"{_RANGE}.{third}." not in used:
            return ipaddress.IPv4Network(f"{_RANGE}.{third}.0/24")
    raise NetnsUnavailable(f"no free /24 left in {_RANGE}.0.0/16 on this machine")


def _check() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        raise NetnsUnavailable(f"missing command(s): {', '.join(missing)}")


@contextlib.contextmanager
def _made(names: tuple[str, ...]) -> Iterator[Network]:
    _check()
    _sweep()
    subnet = _free_subnet()
    base = subnet.network_address
    hub_name, *others = names
    pid = os.getpid()
    namespaces = {name: f"{_PREFIX}{pid}-{name}" for name in names}
    made: list[str] = []
    try:
        for name in names:
            _ip("netns", "add", namespaces[name])
            made.append(namespaces[name])
            _ip("-n", namespaces[name], "link", "set", "lo", "up")
        hub = namespaces[hub_name]
        mask = subnet.prefixlen
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "addr", "add", f"{base + 1}/{mask}", "dev", "br0")
        _ip("-n", hub, "link", "set", "br0", "up")
        net = Network(subnet=str(subnet), gateway=str(base + 254))
        net.hosts[hub_name] = Host(hub_name, hub, str(base + 1))
        # The root end: created here, its peer created directly inside the hub.
        root_end = f"pbt{pid}"
        _ip("link", "add", root_end, "type", "veth", "peer", "name", "vroot", "netns", hub)
        _ip("addr", "add", f"{net.gateway}/{mask}", "dev", root_end)
        _ip("link", "set", root_end, "up")
        _ip("-n", hub, "link", "set", "vroot", "master", "br0", "up")
        for index, name in enumerate(others):
            ns, address, port = namespaces[name], str(base + 11 + index), f"v{index}"
            _ip(
                *("-n", ns, "link", "add", "eth0", "type", "veth"),
                *("peer", "name", port, "netns", hub),
            )
            _ip("-n", ns, "addr", "add", f"{address}/{mask}", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", hub, "link", "set", port, "master", "br0", "up")
            net.hosts[name] = Host(name, ns, address)
        yield net
    finally:
        failed = []
        for ns in reversed(made):
            try:
                _ip("netns", "del", ns)
            except (NetnsUnavailable, subprocess.TimeoutExpired) as error:
                failed.append(str(error))
        # Deleting the hub destroyed the root end's veth with its peer: make sure.
        root_left = subprocess.run(
            ["ip", "link", "show", f"pbt{pid}"], capture_output=True, timeout=10, check=False
        )
        if root_left.returncode == 0:
            with contextlib.suppress(NetnsUnavailable):
                _ip("link", "del", f"pbt{pid}")
        if failed:
            raise RuntimeError("could not delete the test's namespaces: " + "; ".join(failed))


@contextlib.contextmanager
def network(*names: str) -> Iterator[Network]:
    """Hosts ``names`` (the first holds the bridge) on one private /24; deleted on exit.

    Skips the test where network namespaces cannot be made here.
    """
    if len(names) < 1 or len(set(names)) != len(names):
        raise ValueError(f"network needs distinct host names; got {names!r}")
    with contextlib.ExitStack() as stack:
        try:
            net = stack.enter_context(_made(names))
        except NetnsUnavailable as error:
            pytest.skip(f"cannot make network namespaces here: {error}")
        yield net
