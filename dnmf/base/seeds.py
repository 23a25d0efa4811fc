"""The one conversion of a ``random_state`` parameter into an int seed.

Light on purpose (NumPy only): graph modules that run on workers import it.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np


def seed_from(random_state) -> int:
    """An int seed from None, an int, a ``numpy.random.RandomState`` or a ``Generator``.

    None draws fresh entropy; a RandomState or Generator is advanced by one
    draw, as scikit-learn's estimators do.
    """
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] % (2**63))
    if isinstance(random_state, (Integral, np.integer)) and not isinstance(random_state, (bool, np.bool_)):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    raise ValueError(
        f"random_state must be None, an int, a numpy RandomState or Generator; got {random_state!r}. "
        "Pass an int for reproducible results."
    )
