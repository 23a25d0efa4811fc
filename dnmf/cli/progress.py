"""What a running fit shows: a live bar in a terminal, plain lines in logs, JSON for collectors.

- a terminal (standard output is a TTY): a tqdm bar on standard error with
  the loss, its relative change and the ETA (at ``max_iter``: ``tol`` may
  stop earlier);
- piped or redirected: no bar; a line on standard error at most every few
  seconds, so logs stay readable;
- ``--log-json``: one JSON object per iteration on standard output;
- ``--quiet``: nothing until the result.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from typing import Any, TextIO

from .console import check_interrupt

#: Seconds between two progress lines when the output is not a terminal.
LINE_EVERY = 5.0


def _rel(prev: float | None, loss: float) -> float:
    if prev is None or not prev or not math.isfinite(prev):
        return math.nan
    return (prev - loss) / prev


class Progress:
    """``callback(iteration, elapsed, loss)`` for :meth:`dnmf.NMF.fit` that displays progress.

    Parameters
    ----------
    total : int
        max_iter.
    mode : {"bar", "lines", "json", "quiet"}
    out, err : text streams
        Where JSON records / bars and lines go.
    """

    def __init__(
        self, total: int, mode: str, *, out: TextIO | None = None, err: TextIO | None = None, desc: str = "fit"
    ) -> None:
        self.total = total
        self.mode = mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.prev: float | None = None
        self.last_line = -math.inf
        self.bar = None
        self.desc = desc

    @classmethod
    def choose(cls, total: int, *, quiet: bool, log_json: bool, **kw: Any) -> Progress:
        """The display for this output: JSON, quiet, a bar in a terminal, else plain lines."""
        if log_json:
            mode = "json"
        elif quiet:
            mode = "quiet"
        elif sys.stdout.isatty():
            mode = "bar"
        else:
            mode = "lines"
        return cls(total, mode, **kw)

    def note(self, message: str) -> None:
        """A line of context (dashboard link, where checkpoints go), kept clear of the bar."""
        if self.mode in ("quiet", "json"):
            return
        if self.bar is not None:
            self.bar.write(message, file=self.err)
        else:
            print(message, file=self.err, flush=True)

    def event(self, name: str, **fields: Any) -> None:
        """A JSON record (``--log-json`` only)."""
        if self.mode == "json":
            record = {"event": name, **{k: _jsonable(v) for k, v in fields.items()}}
            print(json.dumps(record), file=self.out, flush=True)

    def __call__(self, iteration: int, elapsed: float, loss: float) -> None:
        check_interrupt()  # a Ctrl-C that Python swallowed in a finalizer (console.interrupt_guard)
        rel = _rel(self.prev, loss)
        self.prev = loss
        if self.mode == "json":
            self.event("iteration", iteration=iteration, loss=loss, relative_change=rel, elapsed=elapsed)
        elif self.mode == "bar":
            if self.bar is None:
                from tqdm.auto import tqdm

                # tqdm draws nothing on a terminal that reports no size (0 x 0: some ptys, CI
                # runners): take the size as shutil sees it ($COLUMNS/$LINES first), or 100 x 24.
                cols, rows = shutil.get_terminal_size((0, 0))
                self.bar = tqdm(
                    total=self.total,
                    desc=self.desc,
                    unit="it",
                    file=self.err,
                    leave=True,
                    ncols=cols if cols > 0 else 100,
                    nrows=rows if rows > 0 else 24,
                )
            self.bar.set_postfix_str(f"loss {loss:.6g}, change {rel:.2e}", refresh=False)
            self.bar.update(max(iteration - self.bar.n, 0))
        elif self.mode == "lines":
            now = time.monotonic()
            if now - self.last_line >= LINE_EVERY or iteration == 1 or iteration >= self.total:
                self.last_line = now
                eta = elapsed / iteration * (self.total - iteration) if iteration else math.nan
                print(
                    f"iteration {iteration}/{self.total}: loss {loss:.6g} (change {rel:.2e}), "
                    f"{elapsed:.1f} s, ETA <= {eta:.0f} s",
                    file=self.err,
                    flush=True,
                )

    def close(self) -> None:
        """Finish the bar (if any), leaving its last state on screen."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v
