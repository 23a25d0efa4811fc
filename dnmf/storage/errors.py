"""Errors raised by the storage layer."""

from __future__ import annotations


class StoreError(ValueError):
    """A store dnmf cannot use: missing, foreign, of an unknown version, or corrupt.

    Subclasses :class:`ValueError` so that callers validating inputs the
    scikit-learn way catch it. The message always names the store's path, the
    problem, and how to fix it.

    Parameters
    ----------
    path : str
        Location of the store (or of the part of it that is at fault).
    problem : str
        What is wrong, with the offending value.
    fix : str
        What the user can do about it.
    """

    def __init__(self, path: str, problem: str, fix: str) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        super().__init__(f"Cannot use the store at {path!r}: {problem}. {fix}")

    def __reduce__(self):
        # Picklable with its three fields, so an error raised in a worker process (or
        # shipped by distributed) arrives as a StoreError, not as a generic Exception.
        return (type(self), (self.path, self.problem, self.fix))
