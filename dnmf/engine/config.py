"""The engine's three-way Dask config keys: true, false or "auto".

``dnmf.read-ahead``, ``dnmf.pipeline`` and ``dnmf.worker-allocator`` each
turn a speed-up on, off, or leave it to a measurement of the cluster.
"""

from __future__ import annotations

import dask


def switch(key: str) -> bool | str:
    """The Dask config key ``key``: True, False or "auto" (its default).

    Raises
    ------
    ValueError
        One line naming the key, for any other value.
    """
    value = dask.config.get(key, "auto")
    # Dask reads true/false from the environment and YAML as booleans already.
    if not (value is True or value is False or value == "auto"):
        raise ValueError(f"The Dask config key {key} is {value!r}; set it to true, false or 'auto'.")
    return value
