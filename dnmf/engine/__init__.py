"""The engine every model runs on: the iteration loop, where it runs, checkpoints, graph helpers.

- :mod:`dnmf.engine.loop`: the one loop (convergence, ``max_time``, callbacks,
  logging, checkpoints, recovery after lost workers, lineage cuts);
- :mod:`dnmf.engine.runner`: persisting and computing on a Client or a local
  scheduler, lineage cuts, the errors that mean lost workers;
- :mod:`dnmf.engine.checkpoint`: the loop's state and its checkpoints;
- :mod:`dnmf.engine.graph`: fixed-order tree reductions, graph assembly and
  references to X's blocks, shared by every model's step graph;
- :mod:`dnmf.engine.blocks`: the block canonicaliser every kernel relies on
  (no Dask: kernels import it).

Nothing is imported here, so that a kernel importing
:mod:`dnmf.engine.blocks` on a worker pulls in no Dask machinery.
"""
