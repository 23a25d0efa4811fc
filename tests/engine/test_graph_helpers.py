"""The graph helpers that both models' step graphs share, against naive references."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf.engine.graph import (
    partial_tree,
    pick,
    pick_at_source,
    place_rows,
    place_sums,
    row_groups,
    sum_list,
    tree_reduce,
    union_all,
)


def _evaluate(layer: dict, key, values: dict):
    """The value of ``key`` in a graph of ``(func, args...)`` tuples: a naive recursive scheduler."""
    if key in values:
        return values[key]
    func, *args = layer[key]

    def resolve(arg):
        if isinstance(arg, list):
            return [resolve(a) for a in arg]
        return _evaluate(layer, arg, values) if isinstance(arg, tuple) and (arg in layer or arg in values) else arg

    values[key] = func(*(resolve(a) for a in args))
    return values[key]


def _halving_sum(parts: list, t: int = 0, depth: int = 0):
    """The naive reference: node t at depth covers [t / 2**depth, (t + 1) / 2**depth) of the row
    blocks, rounded up; it sums its left half, then its right (an empty half leaves the other)."""
    n = len(parts)
    lo, hi = math.ceil(t * n / 2**depth), math.ceil((t + 1) * n / 2**depth)
    if hi - lo <= 1:
        return parts[lo] if hi > lo else None
    a, b = _halving_sum(parts, 2 * t, depth + 1), _halving_sum(parts, 2 * t + 1, depth + 1)
    return a if b is None else b if a is None else sum_list([a, b])


@settings(max_examples=60, deadline=None)
@given(
    n_rows=st.integers(1, 20),
    n_cols=st.integers(1, 3),
    data=st.data(),
)
def test_partial_tree_sums_like_the_halving_tree_whoever_holds_the_rows(n_rows, n_cols, data):
    """Same bits as the naive halving sum over each column block alone, for any owners (or none) and
    any whole_levels; a whole-tuple sum never mixes owners, and without owners only the root is split."""
    contiguous = data.draw(st.booleans())
    if contiguous:
        n_owners = data.draw(st.integers(1, 4))
        owners = [i * n_owners // n_rows for i in range(n_rows)]
    else:
        owners = data.draw(st.lists(st.integers(0, 2), min_size=n_rows, max_size=n_rows))
    whole_levels = data.draw(st.one_of(st.none(), st.integers(0, 5)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    parts = [
        tuple(rng.standard_normal((3, 2)) * 10.0 ** rng.integers(-8, 8) for _ in range(n_cols)) for _ in range(n_rows)
    ]
    values = {("leaf", i): parts[i] for i in range(n_rows)}
    leaves = [("leaf", i) for i in range(n_rows)]
    for who in (owners, None):
        layer: dict = {}
        totals = partial_tree(layer, "p", leaves, n_cols, who, whole_levels)
        for j in range(n_cols):
            expected = _halving_sum([parts[i][j] for i in range(n_rows)])
            np.testing.assert_array_equal(_evaluate(layer, totals[j], dict(values)), expected)
        for key, task in layer.items():
            if "all-L" in key[0] and who is not None:
                rows = set()
                stack = list(task[1])
                while stack:
                    child = stack.pop()
                    if child[0] == "leaf":
                        rows.add(child[1])
                    else:
                        stack.extend(layer[child][1])
                assert len({who[i] for i in rows}) == 1
        if who is None and whole_levels is None:
            assert sum(1 for key in layer if key[0] == "pj") == n_cols


@pytest.mark.parametrize("n_workers", [2, 4, 8])
@pytest.mark.parametrize("n_rows", [6, 13, 14, 100, 255])
def test_partial_tree_sums_each_workers_range_whole(n_rows, n_workers):
    """The contiguous ranges of a power of two of workers meet the tree's nodes: one split per
    worker and column block (its range's sum), so nothing crosses before the range is summed.
    The pairwise tree of neighbours split 14 row blocks on 2 workers five times (6 | 7 a pair)."""
    owners = [i * n_workers // n_rows for i in range(n_rows)]
    layer: dict = {}
    totals = partial_tree(layer, "p", [("leaf", i) for i in range(n_rows)], 3, owners)
    used = len(set(owners))  # all of them, but where there are fewer row blocks than workers
    assert sum(1 for key in layer if key[0] == "pj") == used * 3
    assert sum(1 for key in layer if key[0].startswith("pall")) == n_rows - used
    leaves = {("leaf", i): tuple(np.full(1, float(i + 1)) * (j + 1) for j in range(3)) for i in range(n_rows)}
    total = n_rows * (n_rows + 1) // 2
    assert [_evaluate(layer, key, dict(leaves))[0] for key in totals] == [total * (j + 1) for j in range(3)]


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_row_groups_cut_the_row_blocks_into_consecutive_ranges(sizes):
    groups = row_groups(sizes, sum(sizes))
    assert [len(r) for r in groups] == sizes
    assert [i for r in groups for i in r] == list(range(sum(sizes)))


@pytest.mark.parametrize("sizes", [(2, 2), (3, 0, 2), ()])
def test_row_groups_reject_sizes_that_do_not_cover_the_rows(sizes):
    with pytest.raises(ValueError, match=r"must be positive and add up to the 5 row blocks"):
        row_groups(sizes, 5)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.lists(st.integers(0, 30), unique=True), min_size=1, max_size=5))
def test_union_all_is_the_sorted_set_union(parts):
    arrays = [np.sort(np.array(p, dtype=np.intp)) for p in parts]
    assert union_all(arrays).tolist() == sorted(set().union(*map(set, parts)))


def test_place_rows_puts_each_rows_keys_on_its_owner():
    where = place_rows(["a", "a", "b"], 3, lambda i: [("A", i), ("out", i, 0)])
    assert where == {
        ("A", 0): "a",
        ("out", 0, 0): "a",
        ("A", 1): "a",
        ("out", 1, 0): "a",
        ("A", 2): "b",
        ("out", 2, 0): "b",
    }
    with pytest.raises(ValueError, match=r"owners names 2 workers; expected one per row block \(3\)"):
        place_rows(["a", "b"], 3, lambda i: [("A", i)])


def _moves(layer: dict, nodes: list, where: dict) -> int:
    """Parts held by another worker than the node that sums them."""
    moved = 0
    for key in nodes:
        for part in layer[key][1]:
            part = part[1] if isinstance(part, tuple) and part[0] is pick else part
            moved += where[part] != where[key]
    return moved


@settings(max_examples=80, deadline=None)
@given(n_rows=st.integers(1, 8), data=st.data())
def test_place_sums_moves_the_fewest_partials(n_rows, data):
    """Against every placement of the tree's sums: none moves fewer parts; ties go where the parent is."""
    owners = data.draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n_rows, max_size=n_rows))
    where = {("row", i): w for i, w in enumerate(owners)}
    layer: dict = {}
    leaves = [(pick, ("row", i), "P") for i in range(n_rows)]
    top = tree_reduce(layer, "p", leaves, split_every=2)
    layer[("col", 0)] = (sum, list(top))
    nodes = [*layer]  # parts before their sums
    placed = dict(where)
    place_sums(layer, nodes, placed)
    assert set(placed) == set(where) | set(nodes)
    workers = sorted(set(owners))
    best = min(
        _moves(layer, nodes, {**where, **dict(zip(nodes, choice, strict=True))})
        for choice in itertools.product(workers, repeat=len(nodes))
    )
    assert _moves(layer, nodes, placed) == best


def test_place_sums_on_six_row_blocks_of_two_workers():
    """Three row blocks each: the sum that mixes them goes where its parent is; two partials move, not three."""
    where = {("row", i): "ab"[i // 3] for i in range(6)}
    layer: dict = {}
    top = tree_reduce(layer, "p", [(pick, ("row", i), "P") for i in range(6)], split_every=2, until=2)
    layer[("col", 0)] = (sum, list(top))
    nodes = [*layer]
    place_sums(layer, nodes, where)
    assert [where[key] for key in nodes] == ["a", "a", "b", "a", "a"]
    assert _moves(layer, nodes, where) == 2


def test_place_sums_spreads_tied_roots():
    """Column blocks whose last sums cost the same anywhere go to different workers."""
    where = {("row", 0): "a", ("row", 1): "b"}
    roots: dict = {}
    layer = {("col", j): (sum, [("row", 0), ("row", 1)]) for j in range(4)}
    for j in range(4):
        place_sums(layer, [("col", j)], where, roots)
    assert [where[("col", j)] for j in range(4)] == ["a", "b", "a", "b"]


def test_pick_at_source_moves_only_the_picked_part_and_sums_the_same_arrays():
    """A sum reading picks of results on its own and on another worker: only the remote pick becomes a task, there."""
    results = {("A", i): {"W": np.full((2, 2), 10.0 * i), "P": np.arange(4.0).reshape(2, 2) + i} for i in range(3)}
    where = {("A", 0): "w0", ("A", 1): "w0", ("A", 2): "w1", ("S", 0): "w0", ("T", 0): "w0"}
    layer: dict = dict(results)
    layer[("S", 0)] = (sum_list, [(pick, ("A", 0), "P"), (pick, ("A", 2), "P")])
    # a pick inside an inlined task of a node, as a column task inlines its last sum
    layer[("T", 0)] = (np.negative, (sum_list, [(pick, ("A", 1), "P"), (pick, ("A", 2), "P")]))
    before = {key: layer[key] for key in [("S", 0), ("T", 0)]}
    pick_at_source(layer, [("S", 0), ("T", 0)], where, "Pr")
    assert layer[("S", 0)] == (sum_list, [before[("S", 0)][1][0], ("Pr", 0)])
    assert layer[("T", 0)] == (np.negative, (sum_list, [(pick, ("A", 1), "P"), ("Pr", 1)]))
    assert layer[("Pr", 0)] == layer[("Pr", 1)] == (pick, ("A", 2), "P")
    assert where[("Pr", 0)] == where[("Pr", 1)] == "w1"

    def run(task):
        if isinstance(task, list):
            return [run(t) for t in task]
        if isinstance(task, tuple) and task and callable(task[0]):
            return task[0](*(run(a) for a in task[1:]))
        if isinstance(task, tuple) and task in layer:
            return run(layer[task])
        return task

    np.testing.assert_array_equal(run(layer[("S", 0)]), results[("A", 0)]["P"] + results[("A", 2)]["P"])
    np.testing.assert_array_equal(run(layer[("T", 0)]), -(results[("A", 1)]["P"] + results[("A", 2)]["P"]))
