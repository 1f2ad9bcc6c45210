#!/usr/bin/env python
"""Generate pseudo-mask proposals for a dataset and write them as COCO json.

Example (two GPUs, or two CPU processes with gloo when there is no GPU):

    python tools/generate_proposals.py --config-file configs/proposals/synthetic.yaml \
        --dataset synthetic_train --output datasets/synthetic/pseudo/train.json --num-gpus 2

--dataset takes a registered name or ``folder:PATH``, every image under PATH (sub-folders
included; ids stable as the folder changes, see uis_d2/data/image_folder.py); train on the result
with ``DATASETS.TRAIN '("pseudo:OUT.json",)'``.

Interrupted runs resume from OUT.json.shards/ when started again with the same arguments (any
process count); the result is byte-identical to an uninterrupted run. See
uis_d2/proposals/runner.py for the output conventions.
"""

from __future__ import annotations

import argparse
import sys

import uis_d2  # noqa: F401  (compat fixes and registrations before detectron2 is used)

# isort: split
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from uis_d2.config import load_config
from uis_d2.data.image_folder import ensure_dataset
from uis_d2.proposals.runner import (
    GenerationJob,
    check_checkpoints,
    generate_on_this_rank,
    prepare_job,
    uses_cuda,
)
from uis_d2.utils.launch import launch_from_args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="proposal config (configs/proposals)")
    parser.add_argument(
        "--dataset",
        required=True,
        help="registered detectron2 dataset name, or folder:PATH (every image under PATH)",
    )
    parser.add_argument("--output", required=True, help="pseudo-label json to write")
    parser.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="processes per machine: one per GPU, or CPU processes (gloo) when MODEL.DEVICE is "
        "cpu or there is no CUDA",
    )
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument(
        "--dist-url", default="auto", help="tcp://HOST:PORT of machine 0; 'auto' on one machine"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="only the first N image ids (of a folder: a fixed pseudo-random sample)",
    )
    parser.add_argument(
        "--vis", type=int, default=0, help="draw the first N image ids to <output stem>_vis/"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def run_rank(cfg, job: GenerationJob) -> None:
    setup_logger(name="uis_d2", distributed_rank=comm.get_rank())
    generate_on_this_rank(cfg, job)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    check_checkpoints(cfg)
    ensure_dataset(args.dataset, cfg.INPUT.BAD_IMAGE_POLICY)
    job = prepare_job(args.dataset, args.output, limit=args.limit, num_vis=args.vis)
    launch_from_args(run_rank, args, (cfg, job), backend="nccl" if uses_cuda(cfg) else "gloo")


if __name__ == "__main__":
    main(sys.argv[1:])
