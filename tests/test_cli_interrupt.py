"""Ctrl-C at any moment of ``grulm``, even while PyTorch is still being imported: one line,
``grulm: interrupted``, exit status 130, never a traceback."""

import importlib
import os
import signal
import subprocess
import sys
import time

import pytest

from grulm.cli import interrupts_held, main

SIGINT_STATUSES = (130, -signal.SIGINT)  # a shell shows both as 130


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_at_any_moment_of_start_up_is_one_line():
    """SIGINT at delays that fall in PyTorch's import (about 1.5 s), in parsing and in the
    command. Only a signal during the interpreter's own start-up, before grulm's first line,
    could still show Python's traceback; the shortest delay is well past it."""
    for delay in (0.15, 0.4, 0.8, 1.2):
        process = subprocess.Popen(
            [sys.executable, "-m", "grulm.cli", "info", "/no/such/checkpoint"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err, (delay, err)
        lines = err.strip().splitlines()
        if lines and "error:" in lines[0]:  # the command had already finished: too late
            continue
        assert lines in (["grulm: interrupted"], ["grulm info: interrupted"]), (delay, err)
        assert process.returncode in SIGINT_STATUSES, (delay, process.returncode, err)


def test_an_interrupt_during_the_imports_waits_for_them():
    """Inside the block the signal is only recorded (an import cut short can break NumPy);
    it is raised once the block is through."""
    finished = False
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler has run by now
            finished = True
    assert finished
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_interrupt_while_the_subcommands_import(monkeypatch, capsys):
    def interrupted(name, *args):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib, "import_module", interrupted)
    assert main(["info", "x"]) == 130
    assert capsys.readouterr().err == "grulm: interrupted\n"


def test_interrupt_while_a_command_runs(monkeypatch, capsys):
    import grulm.cli.info

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(grulm.cli.info, "run", interrupted)
    assert main(["info", "x"]) == 130
    assert capsys.readouterr().err == "grulm info: interrupted\n"


def test_importing_the_command_does_not_import_torch():
    """What runs before :func:`main` can catch Ctrl-C must be quick: no PyTorch."""
    code = "import sys, grulm.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout == "False\n"
