"""Speed, memory and fidelity of the proposal pipeline against a deep-spectral-style reference.

CPU mode (default): weight-free PatchStats features of synthetic scenes on a 30x30 patch grid.
Our batched torch spectral clustering is timed against a reference written the way the original
deep-spectral code works (per image: scipy ``eigsh(D - W, M=D, sigma=0)`` then one sklearn
``KMeans(n_init=10)`` per k) on the same features, and their partitions are compared by the
adjusted Rand index. Both sides get the same thread budget (``--threads``).

``--paper-config``: the paper's configuration, ViT-B/16 instance (MAE) and saliency (DINO)
extractors with random weights at a 480-px short side, on ``--device``; there the forwards the
providers share are part of the time, as they are for a user. ``--full-gpu`` is this on CUDA,
with a time breakdown and the CUDA peak memory after the first batch and after all of them (it
must not grow with the number of images).

``--providers SPEC ...`` times the whole generator with each saliency provider setting (a
provider name, "A+B" for an intersection, "A,B" for a union, as ``tools/run_demo.py
--saliency``) against the default SpectralBorder, interleaved over ``--repeats`` rounds in the
same process, and prints each one's time per image and its ratio to the default.

``--end-to-end`` also runs the tool's own loop (uis_d2.proposals.runner, as
tools/generate_proposals.py does) over the images written as JPEG files: decoding in DataLoader
workers, the generator, the json lines and the merge, with the time of each stage.

    python benchmarks/bench_proposals.py --num-images 8 --json-out bench.json
    python benchmarks/bench_proposals.py --full-gpu --num-images 256 --end-to-end
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import uis_d2  # noqa: F401  (compat fixes and registration)
from uis_d2.config import get_cfg
from uis_d2.data.synthetic import render_scene
from uis_d2.features.base import extract_features
from uis_d2.proposals import build_pseudo_mask_generator
from uis_d2.proposals.spectral import kmeans, spectral_clustering, spectral_embedding
from uis_d2.proposals.spectral_generator import SpectralParams, clustering_calls
from uis_d2.utils.files import atomic_write_json


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json-out", type=Path, help="write the figures to this json file")
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--full-gpu", action="store_true", help="--paper-config on CUDA")
    parser.add_argument(
        "--paper-config", action="store_true", help="ViT-B/16 MAE + DINO at 480 px on --device"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both sides")
    parser.add_argument("--reference-images", type=int, default=8, help="images compared to ref")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--restarts", type=int, default=0, help="override PROPOSALS.SPECTRAL.KMEANS_RESTARTS"
    )
    parser.add_argument("--batch-size", type=int, default=0, help="override PROPOSALS.BATCH_SIZE")
    parser.add_argument("--end-to-end", action="store_true", help="also time the tool's loop")
    parser.add_argument("--providers", nargs="+", default=[], help="saliency providers to time")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (--providers)")
    parser.add_argument("--workers", type=int, default=-1, help="override PROPOSALS.NUM_WORKERS")
    return parser.parse_args()


def synthetic_images(count: int, height: int, width: int, seed: int) -> list[torch.Tensor]:
    """Synthetic scenes resized to one size, so every image has the same patch grid."""
    import cv2

    images = []
    for index in range(count):
        rgb, _ = render_scene(np.random.default_rng([seed, 7, index]))
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        images.append(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())
    return images


def benchmark_config(paper: bool):
    cfg = get_cfg()
    p = cfg.PROPOSALS
    if paper:
        p.SHORT_SIDE, p.MAX_SIDE = 480, 800
        p.EXTRACTOR.CHECKPOINT_FORMAT = "mae"  # random weights; distinct configs -> two ViTs
        p.SALIENCY.EXTRACTOR.CHECKPOINT_FORMAT = "dino"
        return cfg, (480, 640)
    for node in (p.EXTRACTOR, p.SALIENCY.EXTRACTOR):
        node.NAME, node.PATCH_SIZE = "PatchStats", 8
    p.SHORT_SIDE, p.MAX_SIDE = 0, 0
    return cfg, (240, 240)  # 30 x 30 patches


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reference_eigenvectors(features: np.ndarray, count: int) -> np.ndarray:
    """deep-spectral's eigenvectors of one image: the ``count`` smallest of the generalised
    problem ``(D - W) v = lambda D v``, by shift-invert.

    As in its code: float32 affinities (torch features moved to numpy), a dense degree matrix
    with degrees below 1e-12 set to 1, ``eigsh(D - W, sigma=0, M=D)`` with a fall-back to
    ``which="SM"`` when the shift-invert factorisation fails.
    """
    from scipy.sparse.linalg import eigsh

    f = features.astype(np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    w = np.maximum(f @ f.T, 0)
    degree = w.sum(axis=1)
    d = np.diag(np.where(degree < 1e-12, 1.0, degree).astype(np.float32))
    try:
        return eigsh(d - w, k=count, sigma=0, which="LM", M=d)[1]
    except (ValueError, RuntimeError):
        return eigsh(d - w, k=count, which="SM", M=d)[1]


def reference_kmeans(vectors: np.ndarray, ks: list[int], seed: int) -> dict[int, np.ndarray]:
    """One scikit-learn KMeans per k on ``vectors[:, 1 : k + 1]``, n_init=10 (the default of
    deep-spectral's time)."""
    from sklearn.cluster import KMeans

    return {
        k: KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors[:, 1 : k + 1])
        for k in ks
    }


def compare_with_reference(batch: torch.Tensor, params: SpectralParams) -> dict:
    """Time ours (batched) and the reference (per image) on the same (B, N, C) features.

    Ours takes milliseconds, so one run is at the mercy of other processes: it runs once more
    before each reference image (interleaved, so both see the same machine load) after a
    warm-up run at this batch size, and its median counts.
    """
    from sklearn.metrics import adjusted_rand_score

    ks, seed = [int(k) for k in params.ks], params.seed
    device = str(batch.device.type)
    host = batch.float().cpu().numpy()

    def run_ours() -> tuple[dict[int, torch.Tensor], float]:
        _sync(device)
        start = time.perf_counter()
        labels = spectral_clustering(batch, ks, params.restarts, params.iters, seed)
        _sync(device)
        return labels, time.perf_counter() - start

    ours, _ = run_ours()  # warm-up
    ours_runs, reference, eigsh_s, kmeans_s = [], [], 0.0, 0.0
    for image in tqdm(host, desc="reference", unit="img"):
        ours_runs.append(run_ours()[1])
        start = time.perf_counter()
        vectors = reference_eigenvectors(image, max(ks) + 1)
        middle = time.perf_counter()
        reference.append(reference_kmeans(vectors, ks, seed))
        eigsh_s, kmeans_s = eigsh_s + middle - start, kmeans_s + time.perf_counter() - middle
    ours_s, reference_s = float(np.median(ours_runs)), eigsh_s + kmeans_s
    aris = [
        adjusted_rand_score(reference[i][k], ours[k][i].cpu().numpy())
        for i in range(len(host))
        for k in ks
    ]
    return {
        "images": len(host),
        "images_per_s": len(host) / ours_s,
        "ours_runs_s": ours_runs,
        "reference_images_per_s": len(host) / reference_s,
        "reference_s_per_image": {"eigsh": eigsh_s / len(host), "kmeans": kmeans_s / len(host)},
        "speedup_vs_reference": reference_s / ours_s,
        "mean_ari": float(np.mean(aris)),
        "min_ari": float(np.min(aris)),
    }


def stage_breakdown(generator, images: list[torch.Tensor], device: str) -> dict:
    """Seconds per image of each stage for one batch: both extractors, the eigensolver and
    k-means over the clustering calls the generator makes (instance and saliency features share
    one call on a GPU), and the rest of the generator (post-processing). The eigensolver and
    k-means are called directly, so on a CPU without spectral_clustering's cache-sized chunks."""
    params = generator.spectral
    ks = [int(k) for k in params.ks]
    timings = {"extractors_s": 0.0, "eigensolver_s": 0.0, "kmeans_s": 0.0}
    _sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        features = extract_features(generator.extractor, images)
        saliency = None
        if generator.saliency_extractor not in (None, generator.extractor):
            saliency = extract_features(generator.saliency_extractor, images)
    _sync(device)
    timings["extractors_s"] = time.perf_counter() - start
    calls = [(features, ks)]
    if saliency is not None:
        calls = clustering_calls(features, saliency, ks, generator.saliency.k)
    for call_features, call_ks in calls:
        batch = torch.stack(call_features).flatten(2).transpose(1, 2)
        start = time.perf_counter()
        embedding = spectral_embedding(batch, max(call_ks), seed=params.seed)
        _sync(device)
        timings["eigensolver_s"] += time.perf_counter() - start
        start = time.perf_counter()
        generator_rng = torch.Generator().manual_seed(0)
        kmeans(embedding.vectors, call_ks, params.restarts, params.iters, generator_rng)
        _sync(device)
        timings["kmeans_s"] += time.perf_counter() - start
    start = time.perf_counter()
    generator(images)
    _sync(device)
    total = time.perf_counter() - start
    timings["postprocess_s"] = max(0.0, total - sum(timings.values()))
    timings["total_s"] = total
    return {key: value / len(images) for key, value in timings.items()}


def run_generator(generator, images: list[torch.Tensor], batch_size: int, device: str) -> dict:
    """images/s of the whole generator in batches; CUDA peak after the first and last batch."""
    peaks = []
    _sync(device)
    start = time.perf_counter()
    with tqdm(total=len(images), desc="generator", unit="img") as bar:
        for first in range(0, len(images), batch_size):
            chunk = images[first : first + batch_size]
            generator(chunk)
            _sync(device)
            if device == "cuda":
                peaks.append(torch.cuda.max_memory_allocated() / 2**20)
            bar.update(len(chunk))
    elapsed = time.perf_counter() - start
    result = {"images_per_s": len(images) / elapsed}
    if peaks:
        result["cuda_peak_mb_first_batch"] = peaks[0]
        result["cuda_peak_mb_all_batches"] = peaks[-1]
    return result


def provider_config(cfg, spec: str):
    """``cfg`` with the saliency providers of ``spec`` ("A", "A+B" or "A,B")."""
    cfg = cfg.clone()
    cfg.PROPOSALS.SALIENCY.COMBINE = "union" if "," in spec else "intersection"
    cfg.PROPOSALS.SALIENCY.PROVIDERS = spec.replace(",", "+").split("+")
    return cfg


def compare_providers(
    cfg, specs: list[str], images: list[torch.Tensor], batch_size: int, device: str, repeats: int
) -> dict:
    """Seconds per image of the generator with each provider setting and the default, measured
    in interleaved rounds (the machine's speed drifts); the median round counts."""
    settings = {"SpectralBorder (default)": cfg, **{s: provider_config(cfg, s) for s in specs}}
    generators = {
        name: build_pseudo_mask_generator(c).to(torch.device(device))
        for name, c in settings.items()
    }
    seconds: dict[str, list[float]] = {name: [] for name in generators}
    for generator in generators.values():
        generator(images[:1])  # warm-up
    for _ in range(repeats):
        for name, generator in generators.items():
            rate = run_generator(generator, images, batch_size, device)["images_per_s"]
            seconds[name].append(1.0 / rate)
    default = float(np.median(seconds["SpectralBorder (default)"]))
    result = {}
    for name, runs in seconds.items():
        median = float(np.median(runs))
        result[name] = {"s_per_image": median, "ratio_to_default": median / default}
        print(f"saliency {name}: {median * 1e3:.1f} ms/image, {median / default:.3f}x the default")
    return result


def run_tool_loop(cfg, images: list[torch.Tensor], workdir: Path) -> dict:
    """images/s of the tool's loop over the images saved as JPEG files, and seconds per image of
    each of its stages (decode wait, generator, writing) plus the final merge."""
    import cv2

    from uis_d2.data.datasets import register_class_agnostic
    from uis_d2.proposals.runner import generate_on_this_rank, prepare_job

    root = workdir / "images"
    root.mkdir()
    records = []
    for index, image in enumerate(images):
        name = f"{index:06d}.jpg"
        rgb = image.permute(1, 2, 0).cpu().numpy()
        cv2.imwrite(str(root / name), np.ascontiguousarray(rgb[:, :, ::-1]))
        records.append(
            {"id": index + 1, "file_name": name, "height": rgb.shape[0], "width": rgb.shape[1]}
        )
    atomic_write_json(
        workdir / "images.json",
        {"images": records, "annotations": [], "categories": [{"id": 1, "name": "object"}]},
    )
    register_class_agnostic("bench_proposals_files", str(workdir / "images.json"), str(root))
    output = workdir / "proposals.json"
    summary = generate_on_this_rank(cfg, prepare_job("bench_proposals_files", output))
    total, count = summary.seconds, summary.processed_now  # from the first batch to the json
    stages = {name: seconds / count for name, seconds in summary.stage_seconds.items()}
    stages["merge"] = (total - sum(summary.stage_seconds.values())) / count
    return {
        "images_per_s": count / total,
        "stage_s_per_image": stages,
        "num_workers": cfg.PROPOSALS.NUM_WORKERS,
        "json_mb": output.stat().st_size / 2**20,
    }


def main() -> None:
    args = parse_args()
    device = "cuda" if args.full_gpu else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda / --full-gpu: no CUDA device is available")
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    cfg, (height, width) = benchmark_config(args.full_gpu or args.paper_config)
    cfg.PROPOSALS.SEED = args.seed
    if args.restarts:
        cfg.PROPOSALS.SPECTRAL.KMEANS_RESTARTS = args.restarts
    if args.batch_size:
        cfg.PROPOSALS.BATCH_SIZE = args.batch_size
    if args.workers >= 0:
        cfg.PROPOSALS.NUM_WORKERS = args.workers
    cfg.MODEL.DEVICE = device
    generator = build_pseudo_mask_generator(cfg).to(torch.device(device))
    images = synthetic_images(args.num_images, height, width, args.seed)
    images = [image.to(device) for image in images]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    generator(images[:1])  # warm-up (allocator, kernels)
    batch_size = cfg.PROPOSALS.BATCH_SIZE
    whole = run_generator(generator, images, batch_size, device)
    breakdown = stage_breakdown(generator, images[:batch_size], device)
    with torch.no_grad():
        reference_images = images[: args.reference_images]
        features = torch.cat(
            [
                torch.stack(
                    extract_features(generator.extractor, reference_images[i : i + batch_size])
                )
                for i in range(0, len(reference_images), batch_size)
            ]
        )
    spectral = compare_with_reference(features.flatten(2).transpose(1, 2), generator.spectral)
    result = {
        "device": device,
        "full_gpu": args.full_gpu,
        "paper_config": args.full_gpu or args.paper_config,
        "threads": args.threads,
        "batch_size": batch_size,
        "kmeans_restarts": cfg.PROPOSALS.SPECTRAL.KMEANS_RESTARTS,
        "num_images": args.num_images,
        "image_size": [height, width],
        "grid": list(features.shape[-2:]),
        "feature_dim": int(features.shape[1]),
        "images_per_s": whole["images_per_s"],
        "generator": whole,
        "spectral": spectral,
        "speedup_vs_reference": spectral["speedup_vs_reference"],
        "mean_ari": spectral["mean_ari"],
        "breakdown_s_per_image": breakdown,
    }
    if args.providers:
        result["providers"] = compare_providers(
            cfg, args.providers, images, batch_size, device, args.repeats
        )
    if args.end_to_end:
        with tempfile.TemporaryDirectory() as workdir:
            result["end_to_end"] = run_tool_loop(cfg, images, Path(workdir))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        result["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    for key in ("images_per_s", "speedup_vs_reference", "mean_ari", "peak_rss_mb"):
        print(f"{key}: {result[key]:.3f}")
    print(f"spectral step: {spectral}")
    print(f"breakdown (s/image): {breakdown}")
    if args.end_to_end:
        print(f"end to end (the tool's loop): {result['end_to_end']}")
    if args.json_out:
        atomic_write_json(args.json_out, result)


if __name__ == "__main__":
    main()
