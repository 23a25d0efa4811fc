"""Old module paths of dnmf (before the package was split into layers), still importable.

``import dnmf.estimator`` or ``from dnmf import blocked`` gives the module at
its new place (``dnmf.nmf.estimator``, ``dnmf.nmf.graph``) under the old
name, with a :class:`DeprecationWarning` naming the new path. Nothing is
imported until an old path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
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


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # importlib set the alias's spec on the module object it got back; the module
        # keeps its own (its real name and file), so reloading or inspecting it still works.
        module.__spec__ = self.spec


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
