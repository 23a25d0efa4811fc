"""distributed's own monitors, run less often on a cluster dnmf fits on.

Every distributed server (the scheduler, each worker, each nanny) times its
event loop with a callback every 20 ms (``distributed.admin.tick.interval``),
and every worker samples its threads' stacks for the dashboard's profile
every 10 ms (``distributed.worker.profile.interval``). Each callback is
cheap; together they are not. Measured on 2 cores with ``LocalCluster(n_workers=2,
threads_per_worker=1)``, idle: about 110 ms of CPU per second (the driver's
process, which runs the scheduler and the nannies, 45; each worker 33),
about 60 with the intervals below. During a fit those callbacks take turns with
the row tasks on the same cores, and a profile sample holds the GIL while
it walks the stack of the thread computing: on the 200,000 × 20,000 case
with 7.3M entries (``solver="mu"``) the processes' CPU per iteration spent
outside the tasks went from 136 ms to 107 ms.

:func:`quiet_monitors` runs them every :data:`INTERVALS` instead, for
the rest of the cluster's life or until undone: the profile then takes 10
samples per second and worker instead of 100 (still a statistical profile of
every task), and an event loop blocked for longer than distributed's limit
(``distributed.admin.tick.limit``, 3 s) is still reported. An interval the
cluster already runs slower (or a profile turned off) is left as it is.
Results never depend on it.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
from distributed.diagnostics.plugin import NannyPlugin, SchedulerPlugin, WorkerPlugin

#: The shortest interval, in seconds, of each monitor callback (by its name in a server's
#: ``periodic_callbacks``) on a cluster dnmf fits on. distributed's defaults: 0.02 and 0.01.
INTERVALS = {"tick": 0.2, "profile": 0.1}
#: Name of the plugins (one per kind of server).
PLUGIN_NAME = "dnmf-quiet-monitors"

logger = logging.getLogger("dnmf")


def slow_down(server: Any) -> dict[str, float]:
    """Run ``server``'s monitor callbacks at most every :data:`INTERVALS`.

    Returns
    -------
    dict
        The callbacks changed and their intervals before, in milliseconds
        (tornado's unit), for :func:`restore`.
    """
    before = {}
    for name, seconds in INTERVALS.items():
        callback = server.periodic_callbacks.get(name)
        if callback is not None and callback.callback_time < seconds * 1000:
            before[name] = callback.callback_time
            # A running PeriodicCallback reads it when it schedules its next run.
            callback.callback_time = seconds * 1000
    return before


def restore(server: Any, before: dict[str, float]) -> None:
    """Put back the intervals :func:`slow_down` returned."""
    for name, ms in before.items():
        callback = server.periodic_callbacks.get(name)
        if callback is not None:
            callback.callback_time = ms


class QuietWorker(WorkerPlugin):
    """Slows a worker's monitors (:func:`slow_down`); its teardown puts them back."""

    idempotent = True

    def __init__(self) -> None:
        self.before: dict[str, float] = {}

    def setup(self, worker: Any) -> None:
        self.before = slow_down(worker)

    def teardown(self, worker: Any) -> None:
        restore(worker, self.before)


class QuietNanny(NannyPlugin):
    """Slows a nanny's event-loop tick; its teardown puts it back."""

    idempotent = True

    def __init__(self) -> None:
        self.before: dict[str, float] = {}

    def setup(self, nanny: Any) -> None:
        self.before = slow_down(nanny)

    def teardown(self, nanny: Any) -> None:
        restore(nanny, self.before)


class QuietScheduler(SchedulerPlugin):
    """Slows the scheduler's event-loop tick; :func:`_unquiet_scheduler` puts it back.

    (distributed calls no method of a scheduler plugin when it is removed.)
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self) -> None:
        self.before: dict[str, float] = {}

    async def start(self, scheduler: Any) -> None:
        self.before = slow_down(scheduler)


def _unquiet_scheduler(dask_scheduler: Any = None) -> tuple[bool, bool]:
    """Put the scheduler's tick back; whether the worker and the nanny plugins are registered."""
    plugin = dask_scheduler.plugins.pop(PLUGIN_NAME, None)
    if plugin is not None:
        restore(dask_scheduler, plugin.before)
    return PLUGIN_NAME in dask_scheduler.worker_plugins, PLUGIN_NAME in dask_scheduler.nanny_plugins


def setting() -> bool:
    """The Dask config key ``dnmf.quiet-monitors`` (default true).

    Raises
    ------
    ValueError
        One line naming the key, for a value other than true or false.
    """
    value = dask.config.get("dnmf.quiet-monitors", True)
    if not isinstance(value, bool):
        raise ValueError(f"The Dask config key dnmf.quiet-monitors is {value!r}; set it to true or false.")
    return value


def quiet_monitors(client: Any) -> None:
    """Slow the monitors of ``client``'s scheduler, workers and nannies (or, with ``dnmf.quiet-monitors`` false, undo it).

    Workers and nannies that join later, such as a restarted worker, get
    it too. Three round trips (one per kind of server); a cluster that was
    quieted already answers at once.
    """
    enabled = setting()
    try:
        if not enabled:
            workers, nannies = client.run_on_scheduler(_unquiet_scheduler)
            if workers:
                client.unregister_worker_plugin(PLUGIN_NAME)
            if nannies:
                client.unregister_worker_plugin(PLUGIN_NAME, nanny=True)
            return
        client.register_plugin(QuietScheduler(), name=PLUGIN_NAME)
        client.register_plugin(QuietWorker(), name=PLUGIN_NAME)
        client.register_plugin(QuietNanny(), name=PLUGIN_NAME)
    except Exception as exc:  # a worker leaving mid-broadcast, say: not worth a failed fit
        logger.warning("Could not change the cluster's monitors (%s); the fit goes on without it.", exc)
