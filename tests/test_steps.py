"""uis_d2/report/steps.py: a pipeline step forked from the step server runs its script as
``python SCRIPT ARGS`` would, and a step that computes with threads after another one did
neither hangs nor breaks (the server itself never computes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from scripts import REPO

# Writes what it saw as a python script into argv[1]; exits with argv[2]; a sibling module must
# import (its folder is first on sys.path) and its atexit handler must run.
PROBE = textwrap.dedent(
    """
    import atexit, json, os, sys
    from sibling import VALUE
    out = sys.argv[1]
    seen = {"name": __name__, "argv": sys.argv[1:], "cwd": os.getcwd(), "sibling": VALUE,
            "env": os.environ.get("STEP_PROBE"), "server": os.getppid()}
    atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
    open(out, "w").write(json.dumps(seen))
    if sys.argv[2] == "raise":
        raise RuntimeError("the step failed")
    sys.exit(int(sys.argv[2]))
    """
)

# Runs steps that compute with 2 threads from one caller that already did, which hangs a child
# forked from a process that has used the OpenMP pool.
THREADED = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    torch.set_num_threads(2)
    torch.randn(600, 600) @ torch.randn(600, 600)
    if len(sys.argv) > 2:
        from uis_d2.report.steps import run_script
        for _ in range(2):
            run_script([__file__, sys.argv[1]])
    """
)


@pytest.fixture()
def probe(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "probe.py").write_text(PROBE)
    (folder / "sibling.py").write_text("VALUE = 7\n")
    return folder / "probe.py"


@pytest.mark.parametrize("mode", ["fork", "subprocess"])
def test_a_step_runs_its_script_as_python_would(probe, tmp_path, monkeypatch, mode):
    from uis_d2.report.steps import run_script

    monkeypatch.setenv("UIS_D2_STEPS", mode)
    monkeypatch.setenv("STEP_PROBE", "set after the server started")
    out = tmp_path / "seen.json"
    run_script([probe, out, "0"], cwd=tmp_path)
    seen = json.loads(out.read_text())
    assert seen["name"] == "__main__" and seen["argv"] == [str(out), "0"]
    assert seen["cwd"] == str(tmp_path) and seen["sibling"] == 7
    assert seen["env"] == "set after the server started"
    assert (tmp_path / "seen.json.atexit").read_text() == "ran"

    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_script([probe, tmp_path / "second.json", "3"], cwd=tmp_path)
    assert failed.value.returncode == 3
    second = json.loads((tmp_path / "second.json").read_text())
    if mode == "fork":  # both steps came from one server, not from this process
        assert second["server"] == seen["server"] != os.getpid()
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_script([probe, tmp_path / "third.json", "raise"], cwd=tmp_path)
    assert failed.value.returncode == 1


def test_steps_compute_with_threads_after_the_caller_did(tmp_path):
    script = tmp_path / "threaded.py"
    script.write_text(THREADED)
    done = subprocess.run(
        [sys.executable, str(script), str(REPO), "run steps"],
        env={**os.environ, "UIS_D2_STEPS": "fork"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_an_unknown_step_mode_is_named(monkeypatch):
    from uis_d2.report.steps import step_mode

    monkeypatch.setenv("UIS_D2_STEPS", "thread")
    with pytest.raises(ValueError, match="UIS_D2_STEPS='thread'"):
        step_mode()
