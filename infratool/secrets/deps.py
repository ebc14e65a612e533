"""The dependency graph of derived secrets (``from:``): cycles, order, what rotates together.

``edges`` maps a secret to the secrets it is derived from. A secret that
rotates takes every secret derived from it (transitively) along, in one
staged rotation, sources before the values derived from them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

Edges = Mapping[str, Sequence[str]]


def find_cycle(edges: Edges) -> list[str] | None:
    """A dependency cycle ``[a, b, ..., a]``, or ``None``; names in first-met order."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in edges.get(node, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state and (found := visit(node)):
            return found
    return None


def dependents(edges: Edges) -> dict[str, set[str]]:
    """Secret -> the secrets derived directly from it."""
    out: dict[str, set[str]] = {}
    for node, deps in edges.items():
        for dep in deps:
            out.setdefault(dep, set()).add(node)
    return out


def with_dependents(roots: Iterable[str], edges: Edges) -> set[str]:
    """``roots`` and every secret derived from them, transitively."""
    down = dependents(edges)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(down.get(node, ()))
    return seen


def order(names: Collection[str], edges: Edges, policy_order: Sequence[str]) -> list[str]:
    """``names`` sorted sources first, ties in policy order (the graph is acyclic)."""
    rank = {n: i for i, n in enumerate(policy_order)}
    done: list[str] = []
    placed: set[str] = set()

    def place(node: str) -> None:
        if node in placed:
            return
        placed.add(node)
        for dep in sorted(edges.get(node, ()), key=lambda d: rank.get(d, 0)):
            if dep in names:
                place(dep)
        done.append(node)

    for node in sorted(names, key=lambda n: rank.get(n, 0)):
        place(node)
    return done


def groups(names: Collection[str], edges: Edges, policy_order: Sequence[str]) -> list[list[str]]:
    """``names`` split into the sets linked by ``from:`` (each ordered by :func:`order`)."""
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in names:
        for dep in edges.get(node, ()):
            if dep in parent:
                parent[root(node)] = root(dep)
    by_root: dict[str, list[str]] = {}
    for node in order(names, edges, policy_order):
        by_root.setdefault(root(node), []).append(node)
    return list(by_root.values())
