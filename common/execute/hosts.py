"""Virtual hosts for multi-host runs on one machine (config `network`, `xfw compare --hosts N`): each host is a
Linux network namespace with one interface (eth0) on a private subnet, joined to the others by a veth pair to a
bridge in the root namespace; an optional token-bucket filter (`tc qdisc ... tbf`) limits each host's link in
both directions to network.rate. The engines' own multi-node launches then run one launcher (or worker) per
host, inside its namespace (`ip netns exec`), bound to its address.

Latency cannot be added here: `netem` does not exist in this kernel; a link's only limit is its rate.

Names carry the pid of the xfw process that made them (namespace xfw<pid>h<i>, bridge xb<pid>, host-side veth
peers xv<pid>h<i>), so that leftovers of an xfw that was killed before it could clean up are recognised and
removed by the next xfw that makes hosts (sweep_stale). Requires root; without it, multi-host runs are refused in
one line before anything starts."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psutil

from xfw.common.errors import UserError

# "address=namespace,...": which namespace the ssh stand-in runs a command in, for each host address.
NAMESPACES_VAR = "XFW_HOST_NAMESPACES"
NETNS_ETC = Path("/etc/netns")  # per-namespace configuration files, mounted by `ip netns exec`
SUBNET = "10.77.0"  # /24; each run's hosts are alone on their bridge, so every run can use the same one
INTERFACE = "eth0"  # the one interface in each host's namespace: what engines are told to bind (GLOO_SOCKET_IFNAME)
NAME = re.compile(r"^xfw(\d+)h(\d+)$")
BRIDGE = re.compile(r"^xb(\d+)$")
# tc's rate units (tc(8), "RATES"): bits or bytes per second, with SI or IEC prefixes.
RATE = re.compile(
    r"^\d+(\.\d+)?(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps|kibit|mibit|gibit|tibit|kibps|mibps|gibps|tibps)$"
)


@dataclass(frozen=True)
class Host:
    index: int
    namespace: str
    address: str
    link: str  # the root-namespace end of its veth pair: its counters are the host's traffic

    def prefix(self) -> list[str]:
        """What runs a command inside this host."""
        return ["ip", "netns", "exec", self.namespace]


def check_rate(rate: str) -> str:
    if not RATE.match(rate.strip().lower()):
        raise ValueError(
            f"{rate!r} is not a rate tc understands (a number and a unit: bit, kbit, mbit, gbit, bps, kbps, mbps, "
            "gbps, e.g. 1gbit or 100mbit)"
        )
    return rate.strip().lower()


def unavailable() -> str | None:
    """Why namespaces cannot be made here; None where they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run as root, or without --hosts"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed; it makes the hosts' namespaces and links"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def namespaces() -> list[str]:
    listed = _ip("netns", "list", check=False).stdout.split("\n")
    return [line.split()[0] for line in listed if line.strip()]


def sweep_stale() -> list[str]:
    """Removes the namespaces and bridges of xfw processes that no longer exist; returns what it removed."""
    removed = []
    for ns in namespaces():
        m = NAME.match(ns)
        if m and not psutil.pid_exists(int(m.group(1))):
            _ip("netns", "delete", ns, check=False)  # its eth0 goes with it, and so the veth pair
            removed.append(ns)
    for etc in NETNS_ETC.glob("xfw*") if NETNS_ETC.exists() else []:
        m = NAME.match(etc.name)
        if m and not psutil.pid_exists(int(m.group(1))):
            shutil.rmtree(etc, ignore_errors=True)
    for link in Path("/sys/class/net").iterdir():
        m = BRIDGE.match(link.name)
        if m and not psutil.pid_exists(int(m.group(1))):
            _ip("link", "delete", link.name, check=False)
            removed.append(link.name)
    return removed


@dataclass(frozen=True)
class HostSet:
    hosts: list[Host]
    # A folder holding `ssh`, the stand-in horovodrun's ssh launcher calls to start a host's processes: it runs the
    # command in that host's namespace (ssh_stand_in). Put first on horovodrun's PATH, with NAMESPACES_VAR set.
    stand_in: Path

    def namespaces_env(self) -> dict[str, str]:
        return {
            NAMESPACES_VAR: ",".join(f"{h.address}={h.namespace}" for h in self.hosts),
            "PATH": f"{self.stand_in}{os.pathsep}{os.environ.get('PATH', '')}",
        }


class VirtualHosts:
    """`with VirtualHosts(n, rate) as hosts:` the hosts exist inside the block, and never after it, whatever ends
    it (the processes in them must have been ended first: a namespace is removed when its last process exits)."""

    def __init__(self, count: int, rate: str | None = None):
        self.count, self.rate = count, rate
        self.pid = os.getpid()
        self.bridge = f"xb{self.pid}"
        self.hosts: list[Host] = []

    def __enter__(self) -> HostSet:
        why = unavailable()
        if why:
            raise UserError(why)
        sweep_stale()
        self.stand_in = Path(tempfile.mkdtemp(prefix="xfw-hosts-"))
        try:
            self._make()
            ssh = self.stand_in / "ssh"
            ssh.write_text(f'#!/bin/sh\nexec {sys.executable} -m xfw.common.execute.hosts "$@"\n')
            ssh.chmod(0o755)
        except BaseException:
            self._remove()
            raise
        return HostSet(self.hosts, self.stand_in)

    def __exit__(self, *exc) -> None:
        self._remove()

    def _make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for i in range(self.count):
            ns, link = f"xfw{self.pid}h{i}", f"xv{self.pid}h{i}"
            host = Host(i, ns, f"{SUBNET}.{i + 1}", link)
            self.hosts.append(host)
            _ip("netns", "add", ns)
            # `ip netns exec` mounts /etc/netns/<ns>/hosts over /etc/hosts: there this machine's hostname is the
            # host's own address, as on a real host. Gloo resolves the hostname where it is given no interface
            # (Horovod 0.28's process-set contexts, horovod/common/gloo/gloo_context.cc), and would get loopback.
            etc = NETNS_ETC / ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{host.address} {socket.gethostname()}\n")
            _ip("link", "add", link, "type", "veth", "peer", "name", INTERFACE, "netns", ns)
            _ip("link", "set", link, "master", self.bridge)
            _ip("link", "set", link, "up")
            _ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", INTERFACE)
            _ip("-n", ns, "link", "set", INTERFACE, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            if self.rate:
                # Both directions: the host's egress on eth0, its ingress as the bridge side's egress.
                for where in (["ip", "netns", "exec", ns], []):
                    device = INTERFACE if where else link
                    limit = [*where, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", self.rate]
                    # burst: at least one MTU and 10 ms at the rate; latency: how long a packet may queue
                    limit += ["burst", "64kb", "latency", "400ms"]
                    done = subprocess.run(limit, capture_output=True, text=True)
                    if done.returncode:
                        raise UserError(f"network.rate {self.rate!r}: tc refused it: {done.stderr.strip()}")

    def _remove(self) -> None:
        for host in self.hosts:
            _ip("netns", "delete", host.namespace, check=False)
            shutil.rmtree(NETNS_ETC / host.namespace, ignore_errors=True)
        _ip("link", "delete", self.bridge, check=False)
        shutil.rmtree(self.stand_in, ignore_errors=True)


def bytes_sent(hosts: list[Host]) -> list[int]:
    """Bytes each host has sent so far: the received-bytes counter of its link's root-namespace end."""
    return [int(Path(f"/sys/class/net/{h.link}/statistics/rx_bytes").read_text()) for h in hosts]


def ssh_stand_in(argv: list[str]) -> None:
    """`ssh [options] HOST [options] COMMAND` as horovodrun's launcher calls it (horovod/runner/util/remote.py):
    COMMAND run by sh in HOST's namespace, on this machine, in place of a remote login. Options (-o X, -p X, -i X)
    mean nothing here and are skipped."""
    namespaces = dict(pair.split("=", 1) for pair in os.environ[NAMESPACES_VAR].split(","))
    words, host = list(argv), None
    while words:
        word = words.pop(0)
        if word in ("-o", "-p", "-i"):
            words.pop(0)
        elif word.startswith("-"):
            continue
        elif host is None:
            host = word
        else:
            words.insert(0, word)
            break
    if host not in namespaces:
        sys.exit(f"xfw ssh stand-in: {host!r} is not one of this run's hosts ({', '.join(namespaces)})")
    os.execvp("ip", ["ip", "netns", "exec", namespaces[host], "sh", "-c", " ".join(words)])


if __name__ == "__main__":
    ssh_stand_in(sys.argv[1:])
