"""Running a pipeline as a sequence of the project's own command-line tools.

The demo and ``tools/run_pipeline.py`` call each tool in a process of its own, as a user
would, skip a step whose output already exists (so a rerun resumes after a kill) and record what
produced their results (command, commit, software, machine, time per step).

Each step's process is forked from a server that has imported torch, detectron2 and uis_d2 once
(step_server.py) rather than started from scratch, which saves those seconds of imports per
step. ``UIS_D2_STEPS=subprocess``, or a platform without fork, starts plain subprocesses.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import detectron2
import torch

REPO = Path(__file__).resolve().parents[2]
STEP_MODES = ("fork", "subprocess")


def step_mode() -> str:
    """How steps start: "fork" (from the step server) where the platform can, unless
    ``UIS_D2_STEPS=subprocess``."""
    mode = os.environ.get("UIS_D2_STEPS", "fork")
    if mode not in STEP_MODES:
        raise ValueError(f"UIS_D2_STEPS={mode!r}: must be one of {STEP_MODES}")
    return mode if hasattr(os, "fork") else "subprocess"


class StepServer:
    """The caller's end of step_server.py: started on the first step, reused for the others,
    restarted if it died; it exits when this process closes its pipe (on exit, even a kill)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def run(self, command: list[str], cwd: Path) -> int:
        if self.process is None or self.process.poll() is not None:
            self._start()
        request = {"script": command[0], "args": command[1:], "env": dict(os.environ)}
        self.requests.write(json.dumps({**request, "cwd": str(cwd)}) + "\n")
        self.requests.flush()
        reply = self.replies.readline()
        if not reply:
            raise RuntimeError(f"the step server died while running {command[0]}")
        return json.loads(reply)["exitcode"]

    def _start(self) -> None:
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        server = [sys.executable, "-m", "uis_d2.report.step_server", requests_r, replies_w]
        self.process = subprocess.Popen(
            [str(a) for a in server], pass_fds=(requests_r, replies_w), cwd=REPO
        )
        os.close(requests_r)
        os.close(replies_w)
        self.requests = os.fdopen(requests_w, "w")
        self.replies = os.fdopen(replies_r)


_SERVER = StepServer()


def run_script(command: list, cwd: Path = REPO) -> None:
    """``python *command`` in the working directory ``cwd``; raises ``CalledProcessError`` with
    its exit status when it fails."""
    command = [str(c) for c in command]
    if step_mode() == "subprocess":
        subprocess.run([sys.executable, *command], check=True, cwd=cwd)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    code = _SERVER.run(command, cwd)
    if code != 0:
        raise subprocess.CalledProcessError(code, [sys.executable, *command])


class Steps:
    """Runs the tools, each unless its output exists, and keeps how long each took (so that a
    figure quoted from a run can be checked against its metrics.json)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.skipped: list[str] = []

    def run(self, title: str, command: list, done: Path) -> None:
        """A failure stops the pipeline with the tool's output (``CalledProcessError``)."""
        if done.exists():
            self.skip(title, done)
            return
        print(f"== {title}\n   $ {' '.join(str(c) for c in command)}", flush=True)
        start = time.perf_counter()
        run_script(command)
        self.seconds[title] = round(time.perf_counter() - start, 1)
        print(f"   {title}: {self.seconds[title]:.0f} s", flush=True)

    def skip(self, title: str, done: Path) -> None:
        print(f"== {title}: already done ({done})")
        self.skipped.append(title)


def git_commit() -> dict[str, str | bool | None]:
    """The checkout's commit and whether tracked files differ from it (None outside git)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "modified": None if status is None else bool(status),
    }


def run_record(command: list[str], steps: Steps, started: datetime.datetime, total: float) -> dict:
    """What produced a metrics.json: command, commit, software, machine and timings."""
    route_file = Path(sys.prefix) / "detectron2-route"
    return {
        "command": " ".join(command),
        **git_commit(),
        "started": started.isoformat(timespec="seconds"),
        "seconds": {**steps.seconds, "total": round(total, 1)},
        "skipped_steps": steps.skipped,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
        "detectron2_route": route_file.read_text().strip() if route_file.is_file() else None,
    }
