"""Ray binds ports on every interface whatever it is told, so its tests run only inside a
loopback-only network namespace (`ip netns add`): nothing it opens is reachable from outside."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is `lo`."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _netns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def kill_namespace_processes(keep: set[int]) -> int:
    """SIGKILL every process in this network namespace but `keep` (a Ray cluster the tests
    started, with all its workers). `ray stop` would also stop clusters in other namespaces
    of the machine: it finds Ray processes by name."""
    mine = _netns_inode("self")
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in keep:
            continue
        if _netns_inode(entry.name) == mine:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def ancestors() -> set[int]:
    """This process and its parents (the shell `ip netns exec` started, and so on)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids
