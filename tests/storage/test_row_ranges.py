"""row_ranges names the worker that scatter_rows puts each row block on, and each worker's range."""

import dask
import numpy as np
import pytest

from dnmf.storage.placement import row_ranges, scatter_rows, workers_info


@pytest.mark.parametrize("n_blocks", [1, 2, 5, 8])
def test_row_ranges_match_where_scatter_rows_puts_the_blocks(dist_client, n_blocks):
    # A key name of its own: the session's cluster may still hold (or be forgetting) other tests' "x" blocks.
    name = f"row-ranges-{n_blocks}"
    futures = scatter_rows(dist_client, {(name, i, 0): np.full(3, i) for i in range(n_blocks)})
    held = dist_client.who_has(list(futures.values()))
    where = {futures[(name, i, 0)].key: i for i in range(n_blocks)}
    placed = [None] * n_blocks
    for key, workers in held.items():
        (placed[where[key]],) = workers
    owners, sizes = row_ranges(dist_client, n_blocks)
    assert list(owners) == placed
    # Each worker holds one contiguous range: the runs of equal owners, in order.
    runs = [1]
    for a, b in zip(owners, owners[1:], strict=False):
        if a == b:
            runs[-1] += 1
        else:
            runs.append(1)
    assert sizes == tuple(runs) and len(set(owners)) == len(sizes) == min(n_blocks, 2)


def test_workers_info_never_misses_the_workers(dist_client):
    """A client that refreshes its cached scheduler info every 5 ms (distributed's default is 2 s)
    still gets both workers from every call: the placement of row blocks must not see an empty
    cluster. ``Client.scheduler_info`` returned an empty worker list ~4% of the time here."""
    from distributed import Client

    with dask.config.set({"distributed.client.scheduler-info-interval": "5ms"}):
        with Client(dist_client.scheduler.address, set_as_default=False) as client:
            counts = {len(workers_info(client)) for _ in range(400)}
    assert counts == {2}
