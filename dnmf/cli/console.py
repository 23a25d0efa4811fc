"""How the command line talks to the user: logging, warnings, and the error policy.

Exit codes: 0 success; 1 the job itself failed; 2 usage error, bad input or
environment. :class:`InputError` and :class:`JobFailed` carry them;
:func:`one_line` turns any exception into one line in the command line's
words.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import warnings

import click

logger = logging.getLogger("dnmf")

#: Exceptions that mean "your input or options are wrong", exit code 2.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ConnectionError,
    KeyError,
    FileExistsError,
    OSError,
    EOFError,
    UnicodeError,
)


def input_error_types() -> tuple[type[BaseException], ...]:
    """_INPUT_ERRORS plus the errors of the storage libraries (a damaged or foreign store)."""
    extra: list[type[BaseException]] = []
    try:
        import zarr.errors as ze

        extra += [
            v
            for v in vars(ze).values()
            if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == ze.__name__
        ]
    except ImportError:  # pragma: no cover
        pass
    try:
        import pyarrow as pa

        extra += [pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError]
    except ImportError:  # pragma: no cover
        pass
    return _INPUT_ERRORS + tuple(extra)


class InputError(click.ClickException):
    """Bad input or options: exit code 2."""

    exit_code = 2

    def format_message(self) -> str:
        return self.message


class JobFailed(click.ClickException):
    """The job (or the command) failed: exit code 1."""

    exit_code = 1


_INPUT_ERROR_NAMES = {
    "StoreError",
    "OutputExistsError",
    "SamePathError",
    "ValueError",
    "TypeError",
    "FileNotFoundError",
    "NotADirectoryError",
    "IsADirectoryError",
    "PermissionError",
    "FileExistsError",
    "KeyError",
    "OSError",
    "ArrowInvalid",
}


def unwrap_worker_error(exc: BaseException) -> tuple[BaseException, bool]:
    """A worker's exception that distributed could not ship as itself arrives as
    ``Exception("StoreError('...')")``: the message inside, and whether it is an input error."""
    import ast
    import re

    if type(exc) is not Exception or len(exc.args) != 1 or not isinstance(exc.args[0], str):
        return exc, False
    m = re.fullmatch(r"(\w+)\((.*)\)", exc.args[0].strip(), flags=re.S)
    if not m:
        return exc, False
    try:
        args = ast.literal_eval(f"({m.group(2)},)")
    except (ValueError, SyntaxError):
        return exc, False
    text = " ".join(str(a) for a in args) if args else m.group(1)
    return Exception(text), m.group(1) in _INPUT_ERROR_NAMES


def one_line(exc: BaseException) -> str:
    from ..storage.matrix import OutputExistsError

    if isinstance(exc, OutputExistsError):
        return f"{exc.path!r} already exists. Pass --overwrite to replace it, or choose another path."
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    # The Python API's wording of a fix, in the command line's words.
    text = text.replace("Pass overwrite=True", "Pass --overwrite").replace("overwrite=True", "--overwrite")
    text = text.replace("on_invalid='drop'", "--on-invalid drop").replace("dtype='float64'", "--dtype float64")
    text = text.replace("rewrite it with dnmf.write_matrix or dnmf.ingest", "ingest it again (`dnmf ingest`)")
    text = text.replace("(copy a matrix store with dnmf.write_matrix)", "")
    text = text.replace("unknown='baseline'", "--unknown baseline").replace("unknown='nan'", "--unknown nan")
    return " ".join(text.split())


def quiet_libraries(verbose: bool) -> None:
    """Dask's, tornado's and asyncio's log messages (worker tracebacks, "Task exception was
    never retrieved" at Ctrl-C) only with --verbose, here and in worker processes started later."""
    import os

    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("distributed", "tornado", "bokeh", "asyncio"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
        os.environ.setdefault("DASK_LOGGING__TORNADO", "critical")
        if "dask" in sys.modules and "distributed" not in sys.modules:
            # Dask read its configuration before these variables were set, and distributed's
            # first import sets its loggers' levels from that configuration, over the ones above.
            import dask

            dask.config.set({"logging.distributed": "critical", "logging.tornado": "critical"})


#: The environment variables ``quiet_libraries`` may set (for the worker processes a command starts).
QUIET_VARIABLES = ("DASK_LOGGING__DISTRIBUTED", "DASK_LOGGING__TORNADO")


@contextlib.contextmanager
def restored_environment(names=QUIET_VARIABLES):
    """Put ``names`` back as they were when the command ends: a command run in-process (a test,
    a notebook) must not leave Dask's workers silenced for whatever the process starts next."""
    import os

    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def setup_logging(verbose: bool, quiet: bool) -> None:
    """dnmf's logger on standard error; Dask's own messages only with --verbose."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("dnmf")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING)
    quiet_libraries(verbose)

    def show(message, category, filename, lineno, file=None, line=None):
        if quiet:
            return
        print(f"warning: {category.__name__}: {' '.join(str(message).split())}", file=sys.stderr)

    warnings.showwarning = show


_interrupted = threading.Event()


@contextlib.contextmanager
def interrupt_guard():
    """Ctrl-C stops the command even when Python swallows it.

    Python raises KeyboardInterrupt wherever the main thread is; inside an object's finalizer
    (a Dask future being garbage-collected) it is only printed as "Exception ignored" and the fit
    goes on. The handler here also records the interrupt, ``check_interrupt`` (called after every
    iteration) raises it again, and the swallowed one is not printed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _interrupted.set()
        silence_loop_errors()
        raise KeyboardInterrupt

    def unraisable(args):
        if not isinstance(args.exc_value, KeyboardInterrupt):
            previous_hook(args)

    previous, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _interrupted.clear()


def silence_loop_errors() -> None:
    """Keep what Dask's event loop logs while a command is being abandoned off the terminal.

    This runs in the signal handler, before the KeyboardInterrupt reaches distributed's
    ``sync``: that function then schedules a callback that cancels the call in flight, and when
    Ctrl-C lands before the call has started (distributed 2026.7 leaves its future unbound until
    then) the callback fails with a NameError that tornado logs as a traceback from the loop's
    thread, possibly before the main thread has printed anything. Unfinished asyncio tasks are
    reported as "Task exception was never retrieved" when the process exits. Neither is news
    to someone who pressed Ctrl-C; the command says "interrupted" and exits 130.
    """
    for name in ("tornado.application", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed under ``interrupt_guard`` (see there)."""
    if _interrupted.is_set():
        raise KeyboardInterrupt
