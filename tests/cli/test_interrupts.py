"""Ctrl-C that Python swallows inside a finalizer still stops a command (console.interrupt_guard)."""

import os
import signal
import sys
import time

import pytest

from dnmf.cli.console import check_interrupt, interrupt_guard


class _InterruptedWhileCollected:
    """An object whose finalizer receives SIGINT, as a Dask future collected at the wrong moment."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, inside __del__: its KeyboardInterrupt is swallowed


def test_a_swallowed_ctrl_c_is_raised_again_at_the_next_check(capsys):
    hook, handler = sys.unraisablehook, signal.getsignal(signal.SIGINT)
    with interrupt_guard():
        _InterruptedWhileCollected()  # collected at once; Python only "ignores" the exception
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()
    assert "Exception ignored" not in capsys.readouterr().err
    # The handlers as they were: Python's own, or SIG_IGN where the test run was started in the background.
    assert sys.unraisablehook is hook and signal.getsignal(signal.SIGINT) is handler
    check_interrupt()  # cleared when the guard ends


def test_a_plain_ctrl_c_still_raises_where_it_lands():
    with interrupt_guard(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_an_in_process_command_leaves_the_environment_as_it_found_it(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dnmf.cli import cli
    from dnmf.cli.console import QUIET_VARIABLES

    for name in QUIET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "r.csv").write_text("user,item,rating\n1,2,3\n2,3,4\n")
    res = CliRunner().invoke(cli, ["ingest", str(tmp_path / "r.csv"), "-o", str(tmp_path / "r.zarr")])
    assert res.exit_code == 0, res.output
    assert not any(name in os.environ for name in QUIET_VARIABLES)


def test_ctrl_c_before_a_dask_call_starts_logs_no_traceback(caplog):
    """distributed's ``sync`` cancels the call in flight on Ctrl-C; when the call has not started
    yet, its cancel callback fails with a NameError that tornado logs from the loop's thread. The
    loop is kept busy here so that the interrupt lands exactly in that window."""
    import logging
    import threading

    from distributed.utils import LoopRunner, sync

    async def call():
        return 1

    levels = {name: logging.getLogger(name).level for name in ("tornado.application", "asyncio")}
    runner = LoopRunner(asynchronous=False)
    runner.start()
    try:
        with caplog.at_level(logging.ERROR), interrupt_guard():
            runner.loop.add_callback(time.sleep, 1.0)  # the loop is busy: `call` cannot start
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            with pytest.raises(KeyboardInterrupt):
                sync(runner.loop, call)
            time.sleep(1.5)  # the loop runs the queued call and the cancel callback
        assert not [r for r in caplog.records if r.name.startswith("tornado")], caplog.text
    finally:
        runner.stop()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
