"""The repository's command-line scripts as modules, so tests run them in-process (a subprocess
would pay a full torch import each time), and a way to kill one of them mid-run."""

import importlib.util
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def load_script(relative_path: str) -> ModuleType:
    """Import ``REPO/relative_path`` (e.g. "tools/train_net.py") as a fresh module, registered
    in ``sys.modules`` while it runs (dataclasses look their module up there)."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def sigkill_when(
    child: multiprocessing.Process, reached: Callable[[], bool], timeout: float, what: str
) -> None:
    """Start ``child``, SIGKILL it as soon as ``reached()`` holds, and check it died of that
    (not earlier, of its own accord, nor later than ``timeout`` seconds)."""
    child.start()
    try:
        deadline = time.monotonic() + timeout
        while not reached():
            assert child.is_alive(), f"the run ended early (exit code {child.exitcode})"
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
            time.sleep(0.02)
    finally:
        child.kill()
        child.join()
    assert child.exitcode == -signal.SIGKILL


def hang_after_checkpoint_saves(saves: int) -> None:
    """In a child process that will be SIGKILLed: the ``saves``-th checkpoint save of
    ``ResilientCheckpointer`` returns only after 10 minutes, so the kill lands right after it."""
    from uis_d2.engine.checkpointer import ResilientCheckpointer

    original_save = ResilientCheckpointer.save
    done = 0

    def save_then_maybe_hang(self, name, **kwargs):
        nonlocal done
        original_save(self, name, **kwargs)
        done += 1
        if done == saves:
            time.sleep(600)

    ResilientCheckpointer.save = save_then_maybe_hang
