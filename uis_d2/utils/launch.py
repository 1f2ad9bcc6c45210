"""``detectron2.engine.launch`` with a selectable process-group backend.

detectron2 v0.6's launcher hardcodes NCCL and asserts that CUDA is available, so multi-process
runs are impossible on CPU-only machines (and in CPU tests). This launcher keeps its call
signature and behaviour (spawn one process per device, set up the local process group that
``detectron2.utils.comm`` reads, then call ``main_func``), but picks the backend: NCCL when CUDA
is available, gloo otherwise, or whatever the caller names.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine.launch import DEFAULT_TIMEOUT, _find_free_port
from detectron2.utils import comm

logger = logging.getLogger(__name__)


def default_backend() -> str:
    """NCCL where GPUs can talk to each other, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def launch(
    main_func: Callable[..., object],
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str | None = "auto",
    args: Sequence[object] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: str | None = None,
    start_method: str = "spawn",
) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on each machine.

    With a world size of 1 it is called in this process, without a process group (as detectron2
    does). ``dist_url="auto"`` picks a free local port (single machine only). ``start_method``
    "fork" skips re-importing torch and detectron2 in every child (seconds each), but is only
    safe on CPU, before CUDA is initialised; "spawn" (detectron2's choice) is always safe.
    """
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    if num_processes_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"need >= 1 process per machine and >= 1 machine, got {num_processes_per_machine} "
            f"and {num_machines}"
        )
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    backend = backend or default_backend()
    mp.start_processes(
        _distributed_worker,
        nprocs=num_processes_per_machine,
        args=(
            main_func,
            world_size,
            num_processes_per_machine,
            machine_rank,
            dist_url,
            tuple(args),
            timeout,
            backend,
        ),
        daemon=False,
        start_method=start_method,
    )


def launch_from_args(
    main_func: Callable[..., object],
    cli_args: argparse.Namespace,
    args: Sequence[object] = (),
    backend: str | None = None,
) -> None:
    """``launch`` with the process layout of the command line (detectron2's argument names:
    ``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``)."""
    launch(
        main_func,
        cli_args.num_gpus,
        num_machines=cli_args.num_machines,
        machine_rank=cli_args.machine_rank,
        dist_url=cli_args.dist_url,
        args=args,
        backend=backend,
    )


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., object],
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
    backend: str,
) -> None:
    if backend.lower() == "nccl" and num_processes_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"{num_processes_per_machine} processes per machine with NCCL need as many GPUs, "
            f"but {torch.cuda.device_count()} are visible"
        )
    global_rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group(
            backend=backend,
            init_method=dist_url,
            world_size=world_size,
            rank=global_rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("process group backend %s, URL %s", backend, dist_url)
        raise
    _create_local_process_group(num_processes_per_machine, world_size // num_processes_per_machine)
    if backend.lower() == "nccl":
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # CPU processes share the machine: each would otherwise start one thread per core, and
        # together they thrash (seen: 40x slower with 2 processes on 16 cores).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_processes_per_machine))
    # Synchronise once so that a slow starter cannot time out the first collective.
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()


def _create_local_process_group(num_processes_per_machine: int, num_machines: int) -> None:
    """The per-machine group behind ``comm.get_local_rank()`` (v0.6 global, newer helper)."""
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_processes_per_machine)
        return
    machine_rank = comm.get_rank() // num_processes_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_processes_per_machine, (i + 1) * num_processes_per_machine))
        group = dist.new_group(ranks)  # every rank must create every group
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
