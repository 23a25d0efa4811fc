"""The graph helpers that both models' step graphs share, against naive references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf.engine.graph import local_levels, place_rows, row_groups, tree_reduce, union_all


def _levels_by_building_the_tree(owners, n_rows):
    """Build the pairwise tree with tree_reduce and count the levels whose every node has one owner."""
    layer: dict = {}
    tree_reduce(layer, "t", [("leaf", i) for i in range(n_rows)], split_every=2)

    def rows(key):
        if key[0] == "leaf":
            return {key[1]}
        return set().union(*(rows(child) for child in layer[key][1]))

    depth = 1 + max((int(name.rsplit("L", 1)[1]) for name, _ in layer), default=-1)
    for level in range(depth):
        nodes = [key for key in layer if key[0] == f"t-L{level}"]
        if any(len({owners[i] for i in rows(key)}) > 1 for key in nodes):
            return level
    return depth


@settings(max_examples=200, deadline=None)
@given(n_rows=st.integers(1, 40), data=st.data())
def test_local_levels_counts_the_single_owner_levels_of_the_pairwise_tree(n_rows, data):
    owners = data.draw(st.lists(st.integers(0, 3), min_size=n_rows, max_size=n_rows))
    assert local_levels(owners, n_rows) == _levels_by_building_the_tree(owners, n_rows)
    assert local_levels(None, n_rows) == _levels_by_building_the_tree([0] * n_rows, n_rows)


def test_local_levels_of_contiguous_ranges():
    # 8 row blocks on 2 workers: levels 0 and 1 stay on a worker, level 2 joins the two ranges.
    assert local_levels(["a"] * 4 + ["b"] * 4, 8) == 2
    # 6 on 3 workers: the pairs stay, the next level pairs blocks 0-3 across workers a and b.
    assert local_levels(list(np.repeat(["a", "b", "c"], 2)), 6) == 1
    assert local_levels(["a", "b"], 2) == 0


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
