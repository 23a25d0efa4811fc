"""Fail if any modules of dnmf import each other in a cycle.

import-linter's layers contract forbids imports between layers but not cycles
inside one package (``dnmf.nmf.estimator -> dnmf.nmf.graph -> dnmf.nmf.estimator``).
This script builds dnmf's import graph with grimp (import-linter's own graph
library), which sees every ``import`` statement, including the lazy ones inside
functions, and reports each group of modules that reach one another
(a strongly connected component of more than one module) with the imports
inside it and one shortest cycle through it.

    PYTHONPATH=. python tools/check_import_cycles.py            # exit 1 if there is a cycle
    PYTHONPATH=. python tools/check_import_cycles.py --type-checking

Imports under ``if TYPE_CHECKING:`` never run, so they are left out unless
``--type-checking`` is given. Python's own implicit import of a package's
``__init__`` when one of its modules is imported is not an edge of the graph
(grimp, like import-linter, only records import statements).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque

import grimp

PACKAGE = "dnmf"


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components in discovery order, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                out.append(sorted(component))
    return out


def shortest_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(edges[node] & members):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return [*reversed(path), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError("a strongly connected component without a cycle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--type-checking", action="store_true", help="count imports under 'if TYPE_CHECKING:' too")
    args = parser.parse_args(argv)

    # This checkout's package first, as the other tools do.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(root, PACKAGE, "__init__.py")) and root not in sys.path:
        sys.path.insert(0, root)

    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=not args.type_checking, cache_dir=None)
    nodes = sorted(graph.modules)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in nodes}
    cycles = [c for c in strongly_connected(nodes, edges) if len(c) > 1]
    if not cycles:
        print(f"{PACKAGE}: {len(nodes)} modules, no import cycles")
        return 0
    print(f"{PACKAGE}: {len(cycles)} group(s) of modules importing each other in a cycle")
    for n, component in enumerate(sorted(cycles), 1):
        members = set(component)
        print(f"\n{n}. {len(component)} modules: {', '.join(component)}")
        print("   shortest cycle: " + " -> ".join(shortest_cycle(component, edges)))
        print("   imports inside the group:")
        for importer in component:
            for imported in sorted(edges[importer] & members):
                details = graph.get_import_details(importer=importer, imported=imported)
                lines = ", ".join(f"l.{d['line_number']}" for d in details)
                print(f"     {importer} -> {imported} ({lines})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
