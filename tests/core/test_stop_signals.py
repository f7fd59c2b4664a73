"""fleetloop_core.stop_signals: a child asked to end with its parent does, even when the parent is killed -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures.processes import alive

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import signal, sys, time
from fleetloop_core import stop_signals
stop_signals.restore()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("child up", flush=True)
time.sleep(120)
"""

PARENT = """
import os, subprocess, sys, time
from fleetloop_core.stop_signals import end_with_parent_env
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=end_with_parent_env(dict(os.environ)),
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
assert child.stdout.readline().strip() == "child up"
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_child_in_its_own_session_ends_when_its_parent_is_killed(spawn):
    parent = spawn([sys.executable, "-c", PARENT, CHILD], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        assert alive(child_pid)
        parent.kill()  # no chance to stop its child itself
        parent.wait()
        deadline = time.monotonic() + 20
        while alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child_pid), "the child outlived its killed parent"
    finally:
        if alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)


def test_grandchildren_do_not_inherit_the_request():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; from fleetloop_core import stop_signals; stop_signals.restore(); "
            "print(os.environ.get('FLEETLOOP_END_WITH_PARENT'))",
        ],
        env=dict(os.environ, FLEETLOOP_END_WITH_PARENT=str(os.getpid())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip() == "None", out.stderr


def test_a_program_not_ours_is_guarded_by_setpriv_and_runs_unguarded_only_where_it_is_missing(monkeypatch):
    from fleetloop_core import stop_signals

    setpriv = stop_signals.shutil.which("setpriv")
    assert setpriv, "util-linux's setpriv (Debian: essential) is missing"
    guarded = stop_signals.end_with_parent_command(["postgres", "-D", "x"], signal.SIGINT, ["--reuid=postgres"])
    assert guarded == [setpriv, "--reuid=postgres", "--pdeathsig", "INT", "postgres", "-D", "x"]

    monkeypatch.setattr(stop_signals.shutil, "which", lambda name: None)
    assert stop_signals.end_with_parent_command(["mosquitto", "-c", "m.conf"]) == ["mosquitto", "-c", "m.conf"]
    with pytest.raises(RuntimeError, match="setpriv is needed to run postgres with --reuid=postgres"):
        stop_signals.end_with_parent_command(["postgres"], signal.SIGINT, ["--reuid=postgres"])
