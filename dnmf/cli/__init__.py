"""The ``dnmf`` command line: ingest, fit or submit, watch, resume, inspect, export.

Built on click. This layer parses options, starts or connects to a cluster
and prints; the work is done by :mod:`dnmf.storage.arrays`, :mod:`dnmf.cli.jobs` and the
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

import sys
import traceback

import click

from .._version import __version__
from .console import (
    InputError,
    JobFailed,
    input_error_types,
    interrupt_guard,
    one_line,
    quiet_libraries,
    restored_environment,
    silence_loop_errors,
    unwrap_worker_error,
)


class _Group(click.Group):
    """Turns exceptions into one readable line and the documented exit codes."""

    def invoke(self, ctx: click.Context):
        argv = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            with restored_environment(), interrupt_guard():
                quiet_libraries("-v" in argv or "--verbose" in argv)
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
            silence_loop_errors()
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if ctx.meta.get("dnmf.verbose"):
                traceback.print_exc()
            inner, input_error = unwrap_worker_error(exc)
            message = one_line(inner)
            if input_error or isinstance(exc, input_error_types()):
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
