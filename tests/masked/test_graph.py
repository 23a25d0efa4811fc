"""The masked model's blocked step (dnmf.masked.graph) against the kernels and the naive objective."""

from dataclasses import replace

import dask
import numpy as np
import pytest
import scipy.sparse as sp

from dnmf.masked import graph as masked_graph
from dnmf.masked import kernels as masked
from tests.masked.helpers import PARAMS, naive_objective, random_state, ratings

# --------------------------------------------------------------------------
# The blocked step
# --------------------------------------------------------------------------


def _step_on(X, chunks, U, V, p, runner):
    import dask.array as da

    bands, _, _ = masked_graph.bands_from_memory(X, *chunks)
    Ud = da.from_array(U, chunks=(chunks[0], p.q))
    Vd = da.from_array(V, chunks=(chunks[1], p.q))
    G = masked_graph.factor_gram(Vd, p) if p.feedback == "implicit" else None
    out = masked_graph.step(bands, Ud, Vd, G, p)
    return dask.compute(*[a for a in out if a is not None], scheduler=runner)


@pytest.mark.parametrize("name", PARAMS)
def test_blocked_step_is_the_two_half_steps(name):
    """One graph step on 3 × 2 bands: U from the row bands, then V from the column bands,
    and its loss scalar is the naive objective of the new state."""
    p = PARAMS[name]
    X, mask, values = ratings(13, 9, 0.4, seed=11)
    U, V = random_state(13, p, 12), random_state(9, p, 13)
    res = _step_on(X, ((4, 5, 4), (2, 7)), U, V, p, "threads")
    U1, V1, s = res[0], res[1], res[-1]
    G = V[:, : p.k].T @ V[:, : p.k] if p.feedback == "implicit" else None
    U_ref = masked.update(X, U, V, p, G)
    G = U_ref[:, : p.k].T @ U_ref[:, : p.k] if p.feedback == "implicit" else None
    V_ref = masked.update(masked.col_band([X]), V, U_ref, p, G)
    if p.feedback == "explicit":  # every row from its own entries only: same bits
        np.testing.assert_array_equal(U1, U_ref)
        np.testing.assert_array_equal(V1, V_ref)
    np.testing.assert_allclose(U1, U_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(V1, V_ref, rtol=1e-12, atol=1e-14)
    assert s[masked_graph.S_LOSS] == pytest.approx(naive_objective(mask, values, U1, V1, p), rel=1e-11)


def test_step_stacks_each_side_once_for_all_band_tasks():
    """Without placement every band task needs the whole other side: one task stacks it and all
    of them share it (at 3M users a stack per column task copied 790 MB each)."""
    import dask.array as da

    p = replace(PARAMS["explicit-plain"], solver="cg")
    X, _, _ = ratings(13, 9, 0.4, seed=11)
    chunks = ((4, 5, 4), (2, 3, 4))
    bands, _, _ = masked_graph.bands_from_memory(X, *chunks)
    Ud = da.from_array(random_state(13, p, 12), chunks=(chunks[0], p.q))
    Vd = da.from_array(random_state(9, p, 13), chunks=(chunks[1], p.q))
    U1, _, _, _ = masked_graph.step(bands, Ud, Vd, None, p)
    dsk = dict(U1.__dask_graph__())
    stacks = {key: task for key, task in dsk.items() if str(key[0]).endswith(("-Uall", "-Vall"))}
    assert sorted(str(key[0])[-4:] for key in stacks) == ["Uall", "Vall"]
    for key in stacks:
        users = [k for k, task in dsk.items() if key in dask.core.get_dependencies(dsk, k)]
        tag = "-B" if str(key[0]).endswith("Uall") else "-A"
        assert sorted(users) == sorted(k for k in dsk if str(k[0]).endswith(tag)), users
        assert len(users) == 3


def test_explicit_step_is_bit_identical_for_any_blocking_and_batching(monkeypatch):
    p = PARAMS["explicit-biases-l1"]
    X, _, _ = ratings(40, 23, 0.3, seed=21)
    U, V = random_state(40, p, 22), random_state(23, p, 23)
    a = _step_on(X, ((40,), (23,)), U, V, p, "sync")
    # Tiny batches (rows longer than 3 entries summed in pieces), 3 rows per batch,
    # no product table: every row still adds the same numbers in the same order.
    monkeypatch.setattr(masked, "BATCH_BYTES", 8 * p.q * (p.q + 1) // 2 * 3)
    monkeypatch.setattr(masked, "BATCH_ROWS", 3)
    monkeypatch.setattr(masked, "TABLE_BYTES", 0)
    b = _step_on(X, ((3, 17, 1, 19), (5, 1, 17)), U, V, p, "threads")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_touched_lists_each_groups_columns_and_rows_per_column_block():
    from dask.local import get_sync

    rng = np.random.default_rng(4)
    X = sp.random(60, 40, density=0.05, random_state=rng, format="csr")
    bands, _, _ = masked_graph.bands_from_memory(X, (20, 20, 20), (15, 25))
    touched = masked_graph.touched(bands, (2, 1))
    values = get_sync(dict(touched.__dask_graph__()), [(touched.name, g, 0) for g in range(2)])
    starts, col_starts = [0, 40, 60], [0, 15, 40]
    for g in range(2):
        for j in range(2):
            block = X[starts[g] : starts[g + 1], col_starts[j] : col_starts[j + 1]]
            cols, rows = values[g][j]
            assert np.array_equal(cols, np.unique(block.indices))
            assert np.array_equal(rows, np.flatnonzero(np.diff(block.indptr)))
    with pytest.raises(ValueError, match="add up to"):
        masked_graph.touched(bands, (1, 1))
