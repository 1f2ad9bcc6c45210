"""Running a pipeline as a sequence of the project's own command-line tools.

The demo and ``tools/run_pipeline.py`` call each tool in a subprocess, exactly as a user would,
skip a step whose output already exists (so a rerun resumes after a kill) and record what
produced their results (command, commit, software, machine, time per step).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import detectron2
import torch

REPO = Path(__file__).resolve().parents[2]


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
        subprocess.run([sys.executable, *map(str, command)], check=True, cwd=REPO)
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
