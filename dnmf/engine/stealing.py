"""Placed tasks stay where they were placed: no work stealing of dnmf's placed tasks.

dnmf places each row block's tasks on the worker that holds its blocks
(:func:`dnmf.engine.graph.assemble`'s ``where``), and sums the partial
products of neighbouring row blocks on that worker first. The placement is a
preference (``allow_other_workers``) so that a fit goes on when a worker
dies. But the distributed scheduler's work stealing also moves such tasks,
and a store-backed row task, which reads its blocks of X itself and so has
only small inputs, looks cheap to move. Measured on 2 workers × 512 MiB (a
store 5× their memory, 448 row blocks, ``solver="mu"``): 8 row tasks were
stolen per fit, each thief ran its stolen rows after its own, and the
neighbours waiting to be summed with them held 53 partial products
(2.5 MB each; 13 without stealing), up to 359 MiB per worker against 279 MiB;
the partials then crossed between the workers.

:class:`PlacedTasksStay` is a scheduler plugin that keeps dnmf's placed tasks
off the work-stealing extension's lists. Nothing
else changes: a placed task whose worker dies still runs elsewhere, and
other tasks on the cluster are stolen as before. :func:`keep_placed`
registers it (a :class:`~dnmf.engine.runner.Runner` does, on a Client, when
the Dask config key ``dnmf.placement`` is true, the default).
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

#: Name of the scheduler plugin.
PLUGIN_NAME = "dnmf-placed-tasks-stay"
#: Keys of dnmf's graphs start with this.
KEY_PREFIX = "dnmf-"

logger = logging.getLogger("dnmf")


def is_dnmf_key(key: Any) -> bool:
    """Whether ``key`` names a task of one of dnmf's graphs (``"dnmf-..."`` or ``("dnmf-...", i, ...)``)."""
    name = key[0] if isinstance(key, tuple) and key else key
    return isinstance(name, str) and name.startswith(KEY_PREFIX)


class PlacedTasksStay(SchedulerPlugin):
    """Keeps dnmf's placed tasks (worker restrictions that allow other workers) off the stealing lists.

    The work-stealing extension lists a task as stealable when it starts
    processing, and again whenever it re-estimates the task's cost; each
    goes through its ``put_key_in_stealable``, which this plugin wraps on
    its scheduler. The wrapper acts only while this plugin is registered
    under :data:`PLUGIN_NAME` (distributed does not tell a plugin when it is
    removed). A scheduler without the extension
    (``distributed.scheduler.work-stealing`` false) is left alone.
    """

    name = PLUGIN_NAME
    idempotent = True

    async def start(self, scheduler: Any) -> None:
        stealing = scheduler.extensions.get("stealing")
        method = getattr(type(stealing), "put_key_in_stealable", None)
        if method is None:
            return
        plugins = scheduler.plugins

        def put_key_in_stealable(ts: Any) -> None:
            if plugins.get(PLUGIN_NAME) is self and ts.loose_restrictions and ts.worker_restrictions:
                if is_dnmf_key(ts.key):
                    return
            method(stealing, ts)

        # Over the class's method, so that a plugin registered again replaces this wrapper.
        stealing.put_key_in_stealable = put_key_in_stealable


def keep_placed(client: Any) -> None:
    """Register :class:`PlacedTasksStay` on ``client``'s scheduler (once; one round trip).

    A scheduler that cannot take it (one without dnmf installed, say) is
    left as it is, with a warning: the fit's results do not depend on it.
    """
    try:
        client.register_plugin(PlacedTasksStay(), name=PLUGIN_NAME)
    except Exception as exc:
        logger.warning("Could not keep dnmf's placed tasks from being stolen (%s); the fit goes on without it.", exc)
