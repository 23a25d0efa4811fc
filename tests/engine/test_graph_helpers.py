"""The graph helpers that both models' step graphs share, against naive references."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dnmf.engine.graph import local_levels, tree_reduce


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
