"""Training-step cost of the paper's SOLOv2 (R101-FPN, frozen backbone, weak losses, batch 4).

Measures seconds per iteration (forward, losses, backward, SGD step), peak memory, the loss
computation alone and Matrix NMS alone, on synthetic random images and masks (no weights, no
data). CPU default: 320 px images and one iteration (2-3 minutes on two busy cores: the heads'
512-wide towers on 3,872 grid cells cost the same at any image size);
``--full-size`` uses the paper's 800 x 1333. The paper's 48 h for 60k steps on an A40 is
2.88 s/iter; the ratio to it is printed.

    python benchmarks/bench_train.py --device cuda --full-size [--amp] --json-out bench.json
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
import torch
from detectron2.config import CfgNode
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from uis_d2.config import get_cfg
from uis_d2.layers.matrix_nms import matrix_nms
from uis_d2.utils.files import atomic_write_json
from uis_d2.utils.masks import masks_to_boxes_xyxy

PAPER_S_PER_ITER = 48 * 3600 / 60_000  # engstler A.2.1: 60k steps in 48 h on one A40


def paper_config(device: str) -> CfgNode:
    """R101-FPN SOLOv2 with the reference head sizes, frozen backbone, FreeSOLO weak losses."""
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SOLOv2"
    cfg.MODEL.DEVICE = device
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 101
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    cfg.MODEL.SOLOV2.LOSS.MODE = "weak"
    return cfg


def tame_random_residuals(model: torch.nn.Module) -> None:
    """Zero the last norm scale of every residual branch ("zero-init residual").

    Random weights behind FrozenBatchNorm (identity statistics) let activations grow with every
    residual block until res5 overflows float16, which pretrained weights never do; with the
    branches zeroed the values stay in range. Timings do not depend on the values.
    """
    for name, module in model.backbone.bottom_up.named_modules():
        if name.endswith("conv3.norm"):
            module.weight.zero_()


def synthetic_batch(
    batch: int, height: int, width: int, instances: int, gen: torch.Generator
) -> list[dict]:
    """Random images with random rectangular masks spanning the whole range of scales."""
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8)
        masks = torch.zeros(instances, height, width, dtype=torch.bool)
        for m in masks:
            h = int(torch.randint(8, height, (1,), generator=gen))
            w = int(torch.randint(8, width, (1,), generator=gen))
            y = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            x = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            m[y : y + h, x : x + w] = True
        inst = Instances((height, width))
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = Boxes(masks_to_boxes_xyxy(masks))
        inst.gt_classes = torch.zeros(instances, dtype=torch.long)
        inputs.append({"image": image, "instances": inst, "height": height, "width": width})
    return inputs


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(device: str, amp: bool):
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device, dtype=dtype, enabled=amp)


def time_training(
    model: torch.nn.Module, inputs: list[dict], iters: int, warmup: int, device: str, amp: bool
) -> list[float]:
    """Seconds of each timed iteration (after ``warmup`` untimed ones)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.00025, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")
    times = []
    for step in range(warmup + iters):
        synchronize(device)
        start = time.perf_counter()
        with EventStorage(10_000 + step), autocast(device, amp):
            losses = model(inputs)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronize(device)
        elapsed = time.perf_counter() - start
        tag = "warm-up" if step < warmup else "timed"
        print(
            f"  iter {step + 1}/{warmup + iters} ({tag}): {elapsed:.2f} s, loss {total.item():.3f}"
        )
        if step >= warmup:
            times.append(elapsed)
    return times


def time_losses(model: torch.nn.Module, inputs: list[dict], device: str, amp: bool) -> float:
    """Seconds of target assignment + dynamic masks + every loss term, heads precomputed."""
    with torch.no_grad(), autocast(device, amp):
        images = model.preprocess_image(inputs)
        heads = model.predict_heads(images)
        best = float("inf")
        for _ in range(3):
            synchronize(device)
            start = time.perf_counter()
            model.losses(inputs, images, heads)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
    return best


def time_matrix_nms(num_masks: int, height: int, width: int, device: str) -> float:
    gen = torch.Generator().manual_seed(1)
    masks = (torch.rand(num_masks, height, width, generator=gen) > 0.7).to(device)
    scores = torch.rand(num_masks, generator=gen).to(device)
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        matrix_nms(masks, scores, kernel="gaussian", sigma=2.0)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json-out", type=Path, help="write the figures to this json file")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision (fp16 on cuda)")
    parser.add_argument("--full-size", action="store_true", help="800 x 1333 px (the paper's)")
    parser.add_argument("--size", type=int, default=320, help="image side without --full-size")
    parser.add_argument("--batch", type=int, default=4, help="images per iteration (paper: 4)")
    parser.add_argument("--iters", type=int, help="timed iterations (default: cpu 1, cuda 10)")
    parser.add_argument("--warmup", type=int, help="untimed iterations first (cpu 0, cuda 3)")
    parser.add_argument("--instances", type=int, default=10, help="pseudo-masks per image")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    # One CPU iteration of the paper's heads (512-wide towers on 3,872 cells) takes minutes.
    on_cpu = args.device == "cpu"
    args.iters = args.iters if args.iters is not None else (1 if on_cpu else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if on_cpu else 3)
    height, width = (800, 1333) if args.full_size else (args.size, args.size)
    torch.manual_seed(0)
    model = build_model(paper_config(args.device))
    tame_random_residuals(model)
    model.train()
    inputs = synthetic_batch(
        args.batch, height, width, args.instances, torch.Generator().manual_seed(0)
    )
    print(
        f"SOLOv2 R101-FPN, frozen backbone, weak losses: batch {args.batch} of {height}x{width}, "
        f"{args.device}{' AMP' if args.amp else ''}, {torch.get_num_threads()} CPU threads"
    )
    times = time_training(model, inputs, args.iters, args.warmup, args.device, args.amp)
    s_per_iter = sum(times) / len(times)
    loss_s = time_losses(model, inputs, args.device, args.amp)
    mask_hw = ((height + 31) // 32 * 8, (width + 31) // 32 * 8)
    nms_s = time_matrix_nms(500, *mask_hw, args.device)
    results = {
        "s_per_iter": s_per_iter,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_max_memory_allocated_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
        ),
        "loss_s": loss_s,
        "matrix_nms_500_s": nms_s,
        "matrix_nms_mask_hw": list(mask_hw),
        "ratio_vs_paper_a40": s_per_iter / PAPER_S_PER_ITER,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "amp": args.amp,
        "image_hw": [height, width],
        "batch": args.batch,
        "timed_iters": args.iters,
        "cpu_threads": torch.get_num_threads(),
    }
    print(
        f"s/iter {s_per_iter:.3f} (paper A40: {PAPER_S_PER_ITER:.2f}; "
        f"ratio {results['ratio_vs_paper_a40']:.2f})"
    )
    print(f"peak RSS {results['peak_rss_mb']:.0f} MB", end="")
    if results["cuda_max_memory_allocated_mb"] is not None:
        print(f", CUDA max allocated {results['cuda_max_memory_allocated_mb']:.0f} MB", end="")
    print(f"\nlosses alone {loss_s:.3f} s; Matrix NMS of 500 masks at {mask_hw}: {nms_s:.3f} s")
    if args.json_out:
        atomic_write_json(args.json_out, results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
