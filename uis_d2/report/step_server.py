"""A server that forks pipeline steps from one interpreter that has imported the heavy modules.

A fresh interpreter spends seconds importing torch, detectron2 and uis_d2 (7-10 s on a 2-core CI
machine, more than most steps of a small run compute), and a pipeline runs a dozen tools. The
server imports them once, then forks a child per step that runs the script as
``python SCRIPT ARGS`` would: as ``__main__``, with its argv, its folder first on sys.path, the
caller's environment and working directory, and atexit handlers at the end.

The server never runs a tensor operation: a process that has used OpenMP or CUDA cannot fork a
child that uses them again (the child hangs in the thread pool or fails to initialise CUDA).
multiprocessing's forkserver would serve too, but re-runs the caller's main script in every
child.

Protocol, one JSON line each way over the two pipes given as arguments: the caller writes
``{"script", "args", "env", "cwd"}``, the server answers ``{"exitcode"}`` when the child ends
(negative: killed by that signal). The server exits when the caller closes its pipe.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import signal
import sys
import traceback

# Imported once by the server: the package and the heavy modules its tools import at the top
# (a module missing here is imported by the step itself).
PRELOAD = ("uis_d2", "detectron2.engine", "detectron2.evaluation", "timm", "numba")


def exit_code(error: SystemExit) -> int:
    """The status ``python`` exits with for an uncaught SystemExit."""
    if error.code is None or isinstance(error.code, int):
        return error.code or 0
    print(error.code, file=sys.stderr)
    return 1


def run_step(script: str, args: list[str], env: dict[str, str], cwd: str) -> int:
    """In the forked child: ``python SCRIPT ARGS``; returns its exit status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as error:
        code = exit_code(error)
    except BaseException:  # noqa: BLE001  (reported as the interpreter would, then status 1)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()  # the child ends with os._exit, which would skip them
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def serve(requests_fd: int, replies_fd: int) -> None:
    for module in PRELOAD:
        importlib.import_module(module)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the caller and the step
    with open(requests_fd) as requests, open(replies_fd, "w") as replies:
        for line in requests:
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                requests.close()
                replies.close()
                os._exit(run_step(**request))
            _, status = os.waitpid(pid, 0)
            replies.write(json.dumps({"exitcode": os.waitstatus_to_exitcode(status)}) + "\n")
            replies.flush()


if __name__ == "__main__":
    del sys.path[0]  # the working directory, put there by ``-m``: a step's folder goes first
    serve(int(sys.argv[1]), int(sys.argv[2]))
