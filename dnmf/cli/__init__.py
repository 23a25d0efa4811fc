"""The ``dnmf`` command line: ingest, fit or submit, watch, resume, inspect, export.

Built on click. This layer parses options, starts or connects to a cluster
and prints; the work is done by :mod:`dnmf.io`, :mod:`dnmf.jobs` and the
estimator.

Exit codes: 0 success; 1 the job itself failed (a bug, a worker that kept
dying); 2 usage error, bad input or environment (a wrong option, a missing
or unreadable file, a damaged store, an existing output without
``--overwrite``, an unwritable directory, an unreachable scheduler).
Errors are one line on standard error, naming the thing and the fix in the
command line's words; the traceback (and Dask's own log messages) only with
``--verbose``.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings

import click

from .._version import __version__

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


def _input_error_types() -> tuple[type[BaseException], ...]:
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


def _unwrap(exc: BaseException) -> tuple[BaseException, bool]:
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


def _one_line(exc: BaseException) -> str:
    from ..storage.matrix import OutputExistsError

    if isinstance(exc, OutputExistsError):
        return f"{exc.path!r} already exists. Pass --overwrite to replace it, or choose another path."
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])
    # The Python API's wording of a fix, in the command line's words.
    text = text.replace("Pass overwrite=True", "Pass --overwrite").replace("overwrite=True", "--overwrite")
    text = text.replace("on_invalid='drop'", "--on-invalid drop")
    text = text.replace("rewrite it with dnmf.io.write_matrix or dnmf.io.ingest", "ingest it again (`dnmf ingest`)")
    text = text.replace("(copy a matrix store with dnmf.write_matrix)", "")
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


class _Group(click.Group):
    """Turns exceptions into one readable line and the documented exit codes."""

    def invoke(self, ctx: click.Context):
        argv = [*getattr(ctx, "_protected_args", []), *ctx.args]
        quiet_libraries("-v" in argv or "--verbose" in argv)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, InputError, JobFailed):
            raise
        except click.UsageError as exc:
            # One line: the problem and where the options are documented.
            name = exc.ctx.command_path if exc.ctx is not None else "dnmf"
            hint = f" (`{name} --help` lists the options)"
            raise InputError(" ".join(exc.format_message().split()) + hint) from None
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if ctx.meta.get("dnmf.verbose"):
                traceback.print_exc()
            inner, input_error = _unwrap(exc)
            message = _one_line(inner)
            if input_error or isinstance(exc, _input_error_types()):
                raise InputError(message) from None
            raise JobFailed(f"job failed: {type(exc).__name__}: {message}") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dnmf")
def cli() -> None:
    """Distributed non-negative matrix factorization on Dask.

    \b
    Typical use:
      dnmf ingest ratings.csv -o ratings.zarr --user-col userId --item-col movieId
      dnmf fit ratings.zarr -k 32 -o model.zarr --checkpoint run1/
      dnmf info model.zarr
      dnmf export model.zarr --format parquet -o factors/
    On a cluster:
      dnmf submit ratings.zarr -k 32 -o model.zarr --scheduler tcp://host:8786
      dnmf status model.zarr.job ; dnmf cancel model.zarr.job ; dnmf resume model.zarr.job
    """


def _register() -> None:
    from . import data, fitting, recommending

    for command in (
        data.ingest,
        fitting.fit,
        fitting.fit_ratings,
        fitting.submit,
        fitting.status,
        fitting.cancel,
        fitting.resume,
        data.info,
        data.transform,
        data.export,
        recommending.split,
        recommending.recommend,
        recommending.recommend_all,
        recommending.evaluate,
        fitting.select_rank,
        fitting.demo,
    ):
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dnmf`` executable."""
    cli.main(args=argv, prog_name="dnmf")
