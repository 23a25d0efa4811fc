"""Graph helpers every model's step graph is built from.

Fixed-order tree reductions (so that a sum does not depend on where its
parts were computed), the assembly of a hand-built layer into one
:class:`~dask.highlevelgraph.HighLevelGraph`, and references to the blocks
of X that inline a store read into the task that uses the block.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from ..storage import buffers, prefetch
from .blocks import RowSubset, add_parts, touched_rows

#: Fan-in of every tree reduction.
SPLIT_EVERY = 8


def sum_list(parts):
    """Sum arrays (or tuples of arrays, or :class:`~dnmf.engine.blocks.RowSubset` partials) in the given order.

    A dense sum's memory comes from :mod:`dnmf.storage.buffers`: the sums of one
    iteration's partials have the sizes of the last iteration's.
    """
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(sum_list([p[t] for p in parts]) for t in range(len(first)))
    if any(isinstance(p, RowSubset) for p in parts):
        return add_parts(parts)
    second = parts[1] if len(parts) > 1 else None
    if _same_layout(first, second):
        # The copy and the first addition in one pass: the same bits as ``copy(first) += second``
        # (same dtype and shape), and each (n_j, k) partial of a sum is read once less.
        out = np.add(first, second, out=buffers.empty_like(first))
        rest = parts[2:]
    elif isinstance(first, np.ndarray) and first.ndim > 0:
        out = buffers.empty_like(first)
        np.copyto(out, first)
        rest = parts[1:]
    else:
        out = np.array(first, copy=True)
        rest = parts[1:]
    for p in rest:
        out += p
    return out


def _same_layout(a, b) -> bool:
    return (
        isinstance(a, np.ndarray)
        and isinstance(b, np.ndarray)
        and a.ndim > 0
        and a.shape == b.shape
        and a.dtype == b.dtype
    )


#: Scheduler priority of :func:`pick` tasks in :func:`assemble`'s graphs (Dask's default is
#: 0; higher runs first among the tasks ready on a worker).
PICK_PRIORITY = 100


def pick(result, name, j=None):
    """``result[name]`` (or ``result[name][j]``): one output of a task returning a dict."""
    value = result[name]
    return value if j is None else value[j]


def tree_reduce(
    layer: dict,
    prefix: str,
    keys: list,
    func: Callable[..., Any] = sum_list,
    *args: Any,
    split_every: int = SPLIT_EVERY,
    until: int = 1,
) -> list:
    """Add fixed-order ``func(parts, *args)`` tasks to ``layer`` until at most ``until`` keys remain.

    Consecutive groups of ``split_every`` keys are combined level by level; a
    group of one key passes through unchanged. The grouping depends only on
    the number of keys, so the result does not depend on where the parts
    were computed. Returns the remaining keys, in order.
    """
    level = 0
    keys = list(keys)
    while len(keys) > max(until, 1):
        new = []
        for g, start in enumerate(range(0, len(keys), split_every)):
            group = keys[start : start + split_every]
            if len(group) == 1:
                new.append(group[0])
                continue
            key = (f"{prefix}-L{level}", g)
            layer[key] = (func, list(group), *args)
            new.append(key)
        keys = new
        level += 1
    return keys


def tree_span(t: int, depth: int, n: int) -> tuple[int, int]:
    """The row blocks ``[lo, hi)`` of node ``t`` at ``depth`` of :func:`partial_tree`'s tree over ``n``.

    Node ``t`` at ``depth`` covers the fraction ``[t / 2**depth, (t + 1) / 2**depth)`` of the
    row blocks, rounded up at both ends: the same rounding as the contiguous ranges that
    :func:`dnmf.storage.placement.row_owner` gives ``P`` workers (``i * P // n``), so for every
    power of two ``P`` each worker's range is one node, at depth ``log2(P)``. For a power of two
    of row blocks the tree is the pairwise tree of consecutive neighbours.
    """
    return -(-t * n // 2**depth), -(-(t + 1) * n // 2**depth)


def partial_tree(
    layer: dict,
    prefix: str,
    leaves: list,
    n_cols: int,
    owners: Sequence[Hashable] | None = None,
    whole_levels: int | None = None,
) -> list:
    """Add the fixed binary tree that sums per-row-block tuples of ``n_cols`` partials; return each column's total.

    The tree halves the row blocks (:func:`tree_span`) down to single blocks, and each node sums
    its left part then its right, so the sums do not depend on ``owners``. What ``owners``
    changes is how the nodes are cut into tasks: a node whose row blocks all have one owner sums
    whole tuples (one task for all column blocks); the first node that mixes owners splits its
    children into one key per column block (a ``getitem`` each) and sums each column block on
    its own from there up, so that only one column block's partial moves to where it is summed.
    With the contiguous ranges of a power of two of workers, that is one split per worker: its
    range's sum.

    Parameters
    ----------
    layer : dict
        The graph layer the tasks are added to.
    prefix : str
        Key prefix: whole sums are ``(prefix + "all-L<lo>", hi)``, splits
        ``(prefix + "j", s, j)``, column sums ``(prefix + "<j>-L<lo>", hi)`` (the node of row
        blocks ``[lo, hi)``).
    leaves : list
        One key per row block, in order; each a tuple of ``n_cols`` partials.
    n_cols : int
        Column blocks.
    owners : sequence of (len(leaves),) hashables, optional
        Who holds each row block; None: one owner for all.
    whole_levels : int, optional
        Sum whole tuples only in nodes of lower height than this (a sum of two row blocks has
        height 0; any value gives the same sums); None: wherever the owners allow.

    Returns
    -------
    list
        ``n_cols`` keys, the total of each column block's partials.
    """
    mixed = object()
    splits = 0

    def split(node) -> list:
        nonlocal splits
        key = node[0]
        if isinstance(key, list):
            return key
        keys = []
        for j in range(n_cols):
            keys.append((f"{prefix}j", splits, j))
            layer[keys[-1]] = (operator.getitem, key, j)
        splits += 1
        return keys

    def build(t: int, depth: int) -> tuple | None:
        # (key or list of column keys, owner or mixed, height); children before their sums in the layer.
        lo, hi = tree_span(t, depth, len(leaves))
        if hi - lo <= 1:
            return (leaves[lo], None if owners is None else owners[lo], -1) if hi > lo else None
        a, b = build(2 * t, depth + 1), build(2 * t + 1, depth + 1)
        if a is None or b is None:  # a fraction too small to hold a block: the other child is this node
            return a if b is None else b
        height = max(a[2], b[2]) + 1
        whole = not isinstance(a[0], list) and not isinstance(b[0], list) and a[1] == b[1] and a[1] is not mixed
        if whole and (whole_levels is None or height < whole_levels):
            key = (f"{prefix}all-L{lo}", hi)
            layer[key] = (sum_list, [a[0], b[0]])
            return key, a[1], height
        parts_a, parts_b = split(a), split(b)
        keys = []
        for j in range(n_cols):
            keys.append((f"{prefix}{j}-L{lo}", hi))
            layer[keys[-1]] = (sum_list, [parts_a[j], parts_b[j]])
        return keys, mixed, height

    return split(build(0, 0))


def task_parts(task) -> list:
    """The keys a task refers to, through its lists, inlined tasks and inlined :func:`pick` calls."""
    found: list = []

    def walk(arg) -> None:
        if isinstance(arg, list):
            for a in arg:
                walk(a)
        elif isinstance(arg, tuple) and arg and callable(arg[0]):
            if arg[0] is pick:
                walk(arg[1])
            else:
                for a in arg[1:]:
                    walk(a)
        elif isinstance(arg, (tuple, str)):
            found.append(arg)

    walk(task)
    return found


def place_sums(layer: dict, nodes: Sequence, where: dict, roots: dict | None = None) -> None:
    """Place the tasks ``nodes`` of a sum tree where the fewest of their parts move between workers.

    ``nodes`` lists the tree's tasks, parts before the tasks that sum them; a node's parts are
    the keys its task refers to (:func:`task_parts`) that are other nodes or keys already in
    ``where`` (e.g. the row tasks, on their owners). Each part held by another worker than the
    node that sums it moves once, and the placement moves the fewest (a dynamic programme over
    the tree, bottom-up for each node's cost on each worker, then top-down for the choice).
    Where workers tie, a part goes where its sum goes, and a root goes to the worker holding the
    fewest roots so far (``roots``, a count kept across calls, so that the column blocks' last
    sums spread). Adds the nodes to ``where``: a preference, which never changes a sum.

    With contiguous ranges of row blocks that do not meet the pairwise tree's pairs (6 row
    blocks on 2 workers), leaving the sums that mix workers to the scheduler moved one more
    partial per iteration than this.
    """
    workers = list(dict.fromkeys(where.values()))
    if not workers:
        return
    index = {w: t for t, w in enumerate(workers)}
    members = set(nodes)
    parts = {key: [p for p in task_parts(layer[key]) if p in members or p in where] for key in nodes}
    cost: dict = {}
    for key in nodes:
        c = np.zeros(len(workers))
        for p in parts[key]:
            if p in cost:
                c += np.minimum(cost[p], cost[p].min() + 1)
            else:
                c += 1.0
                c[index[where[p]]] -= 1.0
        cost[key] = c
    parent: dict = {}
    roots = {} if roots is None else roots
    for key in reversed(nodes):
        c = cost[key]
        if key in parent:
            w = parent[key]
            t = index[w] if c[index[w]] <= c.min() + 1 else int(np.argmin(c))
        else:
            best = [t for t in range(len(workers)) if c[t] == c.min()]
            t = min(best, key=lambda t: (roots.get(workers[t], 0), t))
            roots[workers[t]] = roots.get(workers[t], 0) + 1
        where[key] = workers[t]
        for p in parts[key]:
            if p in members:
                parent.setdefault(p, workers[t])


def pick_at_source(layer: dict, nodes: Sequence, where: dict, prefix: str) -> None:
    """Make each :func:`pick` that a placed node inlines from another worker's result a task on that worker.

    A pick inlined into a sum makes the sum depend on the whole result it picks from; placed on
    another worker, the sum then pulls all of it. A row task's result holds its new rows of
    ``W`` beside its partials (one column block, 6 row blocks on 2 workers: 13.6 MB moved where
    the partial is 5.1 MB). A pick task ``(prefix, t)`` placed where the result is sends only
    what is picked; the same arrays are summed. It runs once its worker has finished the task it
    is computing then (measured on that case: 0.99x the time per iteration). Rewrites the tasks
    of ``nodes`` in ``layer`` and adds the picks to ``layer`` and ``where``.
    """
    made = 0

    def local(arg, here):
        nonlocal made
        if isinstance(arg, list):
            return [local(a, here) for a in arg]
        if isinstance(arg, tuple) and arg and arg[0] is pick:
            source = where.get(arg[1])
            if source is None or source == here:
                return arg
            key = (prefix, made)
            made += 1
            layer[key] = arg
            where[key] = source
            return key
        if isinstance(arg, tuple) and arg and callable(arg[0]):
            return (arg[0], *(local(a, here) for a in arg[1:]))
        return arg

    for key in nodes:
        layer[key] = local(layer[key], where.get(key))


def tree_sum(layer: dict, prefix: str, keys: list, func: Callable[..., Any] = sum_list, *args: Any) -> tuple:
    """A fixed-order reduction of ``keys`` whose last step is returned as a task, to be inlined where it is used.

    The same sums as :func:`tree_top`, one task and one hop fewer: the task that takes the
    result as an argument computes the last step itself.
    """
    keys = tree_reduce(layer, prefix, keys, func, *args, until=SPLIT_EVERY)
    return (func, list(keys), *args)


def tree_top(layer: dict, prefix: str, keys: list, func: Callable[..., Any] = sum_list, *args: Any) -> tuple:
    """A fixed-order reduction of ``keys`` to one task (``(prefix + "-top", 0)``), which it returns."""
    top = (f"{prefix}-top", 0)
    layer[top] = tree_sum(layer, prefix, keys, func, *args)
    return top


def assemble(
    core: str, layer: dict, deps: list, outputs: dict, where: dict | None = None, urgent: set | None = None
) -> HighLevelGraph:
    """One graph: a core layer plus one thin layer per output collection.

    ``where`` (optional) maps keys of any of these layers to the worker that
    should run them: a preference the distributed scheduler follows while
    that worker is alive (``allow_other_workers``), so that tasks run where
    their inputs are (see :mod:`dnmf.storage.placement`). Other schedulers
    ignore it.

    Every :func:`pick` task gets priority :data:`PICK_PRIORITY` on a
    distributed scheduler: a task's dict of results stays in memory until
    its last pick has run, and a pick whose consumers come late in Dask's
    order would otherwise wait behind other row tasks (measured: a worker of
    a factor-store fit held the results of 380 of its 394 row tasks, 1.3 GB,
    until the end of each iteration, for want of one cheap pick each).
    The keys in ``urgent`` (e.g. tasks that write a block out and so free
    it) get the same priority.
    """
    prompt = {
        key
        for part in (layer, *outputs.values())
        for key, task in part.items()
        if isinstance(task, tuple) and task and task[0] is pick
    } | set(urgent or ())
    annotations: dict | None = None
    if prompt:
        annotations = {"priority": lambda key: PICK_PRIORITY if key in prompt else 0}
    if where:
        placed = dict(where)

        def workers(key):
            address = placed.get(key)
            return None if address is None else [address]

        def loose(key):
            return True if key in placed else None

        annotations = {**(annotations or {}), "workers": workers, "allow_other_workers": loose}
    hg = HighLevelGraph.from_collections(core, MaterializedLayer(layer, annotations=annotations), dependencies=deps)
    layers = dict(hg.layers)
    dependencies = dict(hg.dependencies)
    for name, out_layer in outputs.items():
        layers[name] = MaterializedLayer(out_layer, annotations=annotations)
        dependencies[name] = {core}
    return HighLevelGraph(layers, dependencies)


#: Name prefixes of the arrays whose read tasks :func:`x_block_refs` inlines (dnmf's
#: matrix stores and factor stores: one read per block, no dependencies).
INLINED_READS = ("dnmf-store", "dnmf-factors-")


def x_block_refs(X: da.Array):
    """How tasks refer to X's blocks: ``(ref(i, j), dependencies)``.

    For an X read from a dnmf store the block's read task itself is inlined
    into each task that uses the block: the block then lives only inside that
    task, never as a result in a worker's managed memory, so it cannot be held
    between tasks or spilled to disk. The same for a factor read from a factor
    store (:mod:`dnmf.storage.factors`; ``ref(i, 0)``), whose row block only
    its row task reads: one task fewer per block and iteration. Other arrays
    are referenced by key.
    """
    layers = X.__dask_graph__().layers
    layer = layers.get(X.name)
    if len(layers) == 1 and str(X.name).startswith(INLINED_READS) and layer is not None:
        tasks = dict(layer)
        if all(isinstance(t, tuple) and callable(t[0]) for t in tasks.values()):
            return (lambda i, j: tasks[(X.name, i, j)]), []
    return (lambda i, j: (X.name, i, j)), [X]


def x_row_refs(X: da.Array, read_ahead: bool = False):
    """How a per-row-block task refers to its row of X's blocks: ``(ref(i), dependencies)``.

    ``ref(i)`` stands for the list of blocks ``X[i, 0..]`` (see
    :func:`x_block_refs`). With ``read_ahead`` and an X read from a dnmf
    store, it is one task that reads them (or collects them, read ahead
    while an earlier row task of the same worker computed) and then starts
    reading the row block this worker will likely compute next
    (:func:`dnmf.storage.prefetch.take`). The blocks are the same either way.
    """
    return _line_refs(X, 0, read_ahead)


def x_col_refs(X: da.Array, read_ahead: bool = False):
    """:func:`x_row_refs` for a per-column-block task: ``ref(j)`` stands for ``X[0.., j]``."""
    return _line_refs(X, 1, read_ahead)


def _line_refs(X: da.Array, axis: int, read_ahead: bool):
    xref, xdeps = x_block_refs(X)
    count = X.numblocks[1 - axis]

    def at(a: int, b: int):  # block b of line a
        return xref(a, b) if axis == 0 else xref(b, a)

    flat = not xdeps and all(
        not (isinstance(arg, tuple) and arg and callable(arg[0]))
        for i, j in np.ndindex(*X.numblocks)
        for arg in xref(i, j)[1:]
    )
    if not (read_ahead and flat):
        return (lambda a: [at(a, b) for b in range(count)]), xdeps
    # Rows and columns are taken in orders of their own: learnt apart.
    group = X.name if axis == 0 else f"{X.name}/columns"

    def ref(a: int):
        tasks = [at(a, b) for b in range(count)]
        return (prefetch.take, [prefetch.Read((group, a, b), (group, a), t[0], t[1:]) for b, t in enumerate(tasks)])

    return ref, xdeps


def union_all(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The sorted union of 1-D index arrays, merged in the given order (``parts[0]`` itself if alone)."""
    out = parts[0]
    for p in parts[1:]:
        out = np.union1d(out, p)
    return out


def row_groups(sizes: Sequence[int], n_rows: int) -> list[range]:
    """The row blocks of each group: ``sizes`` cut ``range(n_rows)`` into consecutive ranges.

    Parameters
    ----------
    sizes : sequence of int
        Row blocks per group (typically what each worker holds, see
        :func:`dnmf.storage.placement.row_ranges`); positive, adding up to
        ``n_rows``.
    n_rows : int
        Number of row blocks.

    Returns
    -------
    list of range
        ``len(sizes)`` ranges of row block indices, in order.
    """
    if sum(sizes) != n_rows or min(sizes, default=0) < 1:
        raise ValueError(f"sizes {tuple(sizes)} must be positive and add up to the {n_rows} row blocks.")
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [range(int(starts[g]), int(starts[g + 1])) for g in range(len(sizes))]


def place_rows(owners: Sequence[str], n_rows: int, keys_of_row: Callable[[int], list]) -> dict:
    """``{key: worker}``: the keys of row block ``i``'s tasks, placed on ``owners[i]``.

    Parameters
    ----------
    owners : sequence of (n_rows,) str
        The worker of each row block (:func:`dnmf.storage.placement.row_ranges`).
    n_rows : int
        Number of row blocks of the graph.
    keys_of_row : callable
        ``keys_of_row(i)``: the keys of the tasks that belong to row block
        ``i`` and should run where its blocks are.

    Returns
    -------
    dict
        The ``where`` argument of :func:`assemble` (extend it for other tasks).
    """
    if len(owners) != n_rows:
        raise ValueError(f"owners names {len(owners)} workers; expected one per row block ({n_rows}).")
    return {key: owner for i, owner in enumerate(owners) for key in keys_of_row(i)}


def place_blocks(owners: Sequence[str] | None, numblocks: tuple[int, int], name: str) -> dict | None:
    """``where`` for one task per block ``(name, i, j)`` of a pass over X: on row block ``i``'s owner.

    None (no placement) where ``owners`` is None. A pass's tasks have no
    dependencies: unplaced, the distributed scheduler would queue them and
    hand a worker its next one only as one finishes.
    """
    if owners is None:
        return None
    n_rows, n_cols = numblocks
    return place_rows(owners, n_rows, lambda i: [(name, i, j) for j in range(n_cols)])


def group_columns(X: da.Array, sizes: tuple[int, ...]) -> da.Array:
    """The columns each group of row blocks touches, per column block.

    ``sizes`` splits X's row blocks into consecutive groups (``sum(sizes)``
    is X's number of row blocks), typically the ranges that each worker
    holds (:mod:`dnmf.storage.placement`): a group then receives each factor
    row it touches once. Block ``(g, j)`` of the result is a sorted 1-D index
    array into column block ``j``; the result's chunks along its first axis
    are ``sizes`` and its dtype describes the indices, not the blocks (it
    exists to be persisted and referenced by key). One pass over X's indices.
    """
    nI, nJ = X.numblocks
    groups = row_groups(sizes, nI)
    xref, xdeps = x_block_refs(X)
    token = tokenize("dnmf-group-columns", X.name, tuple(sizes))
    core = f"dnmf-group-columns-core-{token}"
    name = f"dnmf-group-columns-{token}"
    layer: dict = {}
    out = {}
    for j in range(nJ):
        for g, members in enumerate(groups):
            keys = []
            for i in members:
                layer[(core, i, j)] = (touched_rows, xref(i, j))
                keys.append((core, i, j))
            out[(name, g, j)] = (union_all, keys)
    graph = assemble(core, layer, xdeps, {name: out})
    return da.Array(graph, name, chunks=(tuple(sizes), (1,) * nJ), dtype=np.intp)


def group_of_rows(columns: da.Array) -> list[int]:
    """For each row block, its group in a :func:`group_columns` result."""
    return [g for g, size in enumerate(columns.chunks[0]) for _ in range(size)]


def _count(index):
    return np.array([[index.size]])


def column_counts(columns: da.Array) -> da.Array:
    """``(groups, col blocks)`` int array: how many columns each block of ``columns`` holds."""
    nG, nJ = columns.numblocks
    return da.map_blocks(_count, columns, chunks=((1,) * nG, (1,) * nJ), dtype=np.int64)


def is_store_backed(X: da.Array) -> bool:
    """Whether every layer of X reads a dnmf store (its blocks are read where they are used)."""
    return all(str(name).startswith("dnmf-store") for name in X.__dask_graph__().layers)


def meta(dtype) -> np.ndarray:
    """An empty 2-D ndarray of ``dtype``: the ``meta`` of a factor array."""
    return np.empty((0, 0), dtype=dtype)
