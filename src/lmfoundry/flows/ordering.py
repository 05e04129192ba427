"""The order a flow's nodes run in: each after the nodes it refers to."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from lmfoundry.flows.models import Node


def topological(nodes: Iterable[Node], cycle: Callable[[list[str]], None]) -> list[Node]:
    """Nodes ordered so each runs after its dependencies (file order among equals); a cycle
    is reported with the nodes on it."""
    nodes = list(nodes)
    by_name = {n.name: n for n in nodes}
    deps = {n.name: {d for d in n.dependencies if d in by_name} for n in nodes}
    ordered: list[Node] = []
    done: set[str] = set()
    while len(done) < len(nodes):
        ready = [n for n in nodes if n.name not in done and deps[n.name] <= done]
        if not ready:
            cycle(_find_cycle({k: v for k, v in deps.items() if k not in done}))
            return ordered + [n for n in nodes if n.name not in done]
        for node in ready:
            ordered.append(node)
            done.add(node.name)
    return ordered


def _find_cycle(deps: dict[str, set[str]]) -> list[str]:
    start = sorted(deps)[0]
    path = [start]
    seen = {start: 0}
    while True:
        following = sorted(d for d in deps[path[-1]] if d in deps)
        nxt = following[0]
        if nxt in seen:
            return [*path[seen[nxt] :], nxt]
        seen[nxt] = len(path)
        path.append(nxt)
