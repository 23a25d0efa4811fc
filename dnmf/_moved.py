"""Old module paths of dnmf (before the package was split into layers), still importable.

``import dnmf.estimator`` or ``from dnmf import blocked`` gives a module under the
old name whose attributes are those of the module at its new place
(``dnmf.nmf.estimator``, ``dnmf.nmf.graph``), plus the few names that moved
to a third module (``MOVED_NAMES``), with a :class:`DeprecationWarning` naming
the new path. Nothing is imported until an old path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: Old module path -> new module path.
MOVED = {
    "dnmf.blocked": "dnmf.nmf.graph",
    "dnmf.checkpoint": "dnmf.engine.checkpoint",
    "dnmf.cluster": "dnmf.cli.cluster",
    "dnmf.demo": "dnmf.cli.demo",
    "dnmf.driver": "dnmf.nmf.step",
    "dnmf.estimator": "dnmf.nmf.estimator",
    "dnmf.evaluation": "dnmf.recommend.evaluation",
    "dnmf.init": "dnmf.nmf.init",
    "dnmf.inputs": "dnmf.base.inputs",
    "dnmf.io": "dnmf.storage.arrays",
    "dnmf.jobs": "dnmf.cli.jobs",
    "dnmf.kernels": "dnmf.nmf.kernels",
    "dnmf.masked_graph": "dnmf.masked.graph",
    "dnmf.nnls": "dnmf.nmf.nnls",
    "dnmf.rank": "dnmf.nmf.selection",
    "dnmf.ratings": "dnmf.masked.estimator",
    "dnmf.report": "dnmf.cli.report",
    "dnmf.topn": "dnmf.recommend.kernels",
}


#: Names that left their old module for another one: (old module, name) -> "new.module:name".
#: ``dnmf.kernels.is_sparse`` was dead code and is gone.
MOVED_NAMES = {
    ("dnmf.estimator", "load"): "dnmf.base.estimator:load",
    ("dnmf.ratings", "load"): "dnmf.base.estimator:load",
    ("dnmf.init", "seed_from"): "dnmf.base.seeds:seed_from",
    ("dnmf.inputs", "auto_chunks"): "dnmf.base.inputs:memory_auto_chunks",
    ("dnmf.inputs", "normalize_chunks"): "dnmf.base.inputs:memory_chunks",
    ("dnmf.inputs", "MatrixStats"): "dnmf.nmf.stats:MatrixStats",
    ("dnmf.inputs", "compute_stats"): "dnmf.nmf.stats:compute_stats",
    ("dnmf.inputs", "check_values"): "dnmf.nmf.stats:check_values",
    ("dnmf.kernels", "as_block"): "dnmf.engine.blocks:as_block",
}


def resolve(target: str):
    """The object a ``"module:name"`` string names."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class OldModule(types.ModuleType):
    """A module at an old path: every attribute is looked up at the new path (or in MOVED_NAMES)."""

    def __init__(self, old: str, new: str) -> None:
        super().__init__(old, f"Moved to {new}; this old path forwards to it.")
        self.__dict__["_dnmf_new"] = new

    def __getattr__(self, name: str):
        old = self.__name__
        moved = MOVED_NAMES.get((old, name))
        if moved is not None:
            return resolve(moved)
        return getattr(importlib.import_module(self.__dict__["_dnmf_new"]), name)

    def __dir__(self):
        new = importlib.import_module(self.__dict__["_dnmf_new"])
        extra = [n for (o, n) in MOVED_NAMES if o == self.__name__]
        return sorted(set(dir(new)) | set(extra))


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return OldModule(spec.name, self.target)

    def exec_module(self, module) -> None:
        # Nothing to run: attributes resolve on use. Import the new module now so that an
        # old path that no longer imports fails at the import statement, as it used to.
        importlib.import_module(self.target)


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds an old module path and hands out the module at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new}; import it from there (the old path will be removed).",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
