"""Training-side cost of a pseudo-label file as the number of images grows: the embedding store
against today's inline-json embeddings, extrapolated to COCO (241,000 images).

A COCO-scale pseudo-label file with each mask's 768-d embedding inline as json text is ~90 KB
per image, and every step that reads it (validation, the per-rank dataset load, detectron2's
serialized dataset list) holds it whole, as Python floats. The project's format keeps the json
a plain COCO file whose annotations name a row (``emb_row``) of a float16 .npy store beside it
(uis_d2/data/pseudo_labels.py). This benchmark measures both on the same synthetic sets:

- new: ``proposals_to_line`` -> shard lines -> ``merge_shards`` (json + store); validated by
  ``check_coco_json(kind="pseudo")``; loaded by ``register_pseudo_labels`` +
  ``DatasetCatalog.get``: the ``CompactDataset`` that training uses as it is.
- old: the same annotations with inline ``emb`` lists (4 decimals) in one json; validated by
  ``json.load`` + ``validate_coco_dict``; loaded by detectron2's ``load_coco_json`` +
  ``DatasetFromList``.

Masks are random ellipses and rectangles (RLE strings of a few hundred characters), embeddings
seeded normal floats; images are a few rendered synthetic scenes, linked once per image. Each
step runs in a fresh process (this script with the hidden ``--step``), so its peak RSS
(``ru_maxrss``) is its own; a child that only imports the modules gives the baseline. The
figures at each size, the per-image slopes between sizes, their extrapolation to 241,000 images
and the targets there (PASS/FAIL) are printed; units are decimal (1 KB = 1000 bytes). The
extrapolation is linear: a bounded buffer that the smaller set does not fill yet (a validator's
batch, a block of store rows) shows as a per-image slope that would not continue.

    python benchmarks/bench_pseudo_labels.py --images 50 200 --mapper-items 20
    python benchmarks/bench_pseudo_labels.py --json-out bench_pseudo_labels.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uis_d2  # noqa: F401  (compat fixes before detectron2, and registration)

# isort: split
import cv2
import numpy as np
import orjson
from bench_writer import random_proposals  # the sibling benchmark (this folder is on sys.path)
from detectron2.data import DatasetCatalog, DatasetFromList
from detectron2.data.datasets import load_coco_json

from uis_d2.config import load_config
from uis_d2.data.datasets import register_pseudo_labels
from uis_d2.data.mapper import PseudoMaskDatasetMapper
from uis_d2.data.pseudo_labels import CATEGORIES, annotation_record, embedding_store_path
from uis_d2.data.synthetic import render_scene
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.proposals.base import Proposals
from uis_d2.proposals.shards import ShardDirectory, shard_dir_for
from uis_d2.proposals.writer import merge_shards, proposals_to_line
from uis_d2.utils.files import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/synthetic/solov2_freesolo_cpu.yaml"
COCO_IMAGES = 241_000  # train2017 + unlabeled2017
SEED = 0
DISTINCT_IMAGES = 8  # image files rendered; every image of a set links to one of them
SHARD_BATCH = 64  # shard lines per write_batch, as the proposal tool writes a batch
PATHS = ("new", "old")
KB, MB, GB = 1e3, 1e6, 1e9

# key, row label, unit ("bytes" or "s"), extrapolated to COCO (per-item figures are not)
FIGURES = (
    ("json_bytes", "json file", "bytes", True),
    ("store_bytes", "embedding store", "bytes", True),
    ("merge_s", "merge (shards -> json + store)", "s", True),
    ("merge_peak_rss", "merge peak RSS", "bytes", True),
    ("validate_s", "validation", "s", True),
    ("validate_peak_rss", "validation peak RSS", "bytes", True),
    ("load_s", "per-rank load", "s", True),
    ("dicts_s", "  of which the dicts", "s", True),
    ("load_peak_rss", "per-rank load peak RSS", "bytes", True),
    ("dicts_peak_rss", "  peak RSS once the dicts are loaded", "bytes", True),
    ("load_rss_after", "RSS once the dicts are freed", "bytes", True),
    ("resident_bytes", "serialized dataset (resident)", "bytes", True),
    ("resident_per_image", "serialized dataset per image", "bytes", False),
    ("mapper_s_per_item", "mapper per item", "s", False),
    ("mapper_peak_rss", "mapper step peak RSS", "bytes", True),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[2000, 8000], help="set sizes")
    parser.add_argument("--masks", type=int, default=15, help="masks per image")
    parser.add_argument("--dim", type=int, default=768, help="embedding width")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--mapper-items", type=int, default=300, help="items the mapper maps")
    parser.add_argument("--workdir", type=Path, help="where the sets are written (default: tmp)")
    parser.add_argument("--json-out", type=Path, help="write every figure to this json file")
    parser.add_argument("--keep", action="store_true", help="keep the generated sets")
    # A child process runs one step on one set and prints its figures as json.
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    parser.add_argument("--set-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step is None and len(set(args.images)) < 2:
        parser.error("--images needs at least two distinct sizes (slopes and extrapolation)")
    return args


# ---- the synthetic sets ---------------------------------------------------------------------


def random_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """(count, H, W) bool masks, each the union of 1-3 ellipses or rectangles."""
    masks = np.zeros((count, height, width), dtype=bool)
    for mask in masks:
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            ry, rx = rng.uniform(6, height / 5), rng.uniform(6, width / 5)
            y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, height))
            x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, width))
            if rng.random() < 0.3:
                mask[y0:y1, x0:x1] = True
            else:
                ys, xs = np.ogrid[y0:y1, x0:x1]
                mask[y0:y1, x0:x1] |= ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    return masks


def synthetic_proposals(args: argparse.Namespace, index: int) -> Proposals:
    """Image ``index``'s proposals, drawn from its own seed (a set's images do not depend on
    its size)."""
    rng = np.random.default_rng([SEED, index])
    return random_proposals(random_masks(rng, args.masks, args.height, args.width), args.dim, rng)


def image_name(index: int) -> str:
    return f"{index:06d}.jpg"


def write_images(root: Path, count: int, height: int, width: int) -> None:
    """A few rendered scenes as JPEG files, and one link per image of the set to one of them."""
    root.mkdir(parents=True)
    for k in range(min(DISTINCT_IMAGES, count)):
        rgb, _ = render_scene(np.random.default_rng([SEED, 7, k]))
        rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(root / f"scene{k}.jpg"), np.ascontiguousarray(rgb[:, :, ::-1]))
    for index in range(count):
        (root / image_name(index)).symlink_to(f"scene{index % DISTINCT_IMAGES}.jpg")


class InlineJsonWriter:
    """Today's file: a COCO json whose annotations carry their embeddings as ``emb`` lists,
    written as the merge writes its json (header, then annotations streamed)."""

    def __init__(self, path: Path, images: list[dict[str, Any]]) -> None:
        self._file = open(path, "wb")
        header = {"info": {"embeddings": "inline"}, "images": images, "categories": CATEGORIES}
        self._file.write(orjson.dumps(header)[:-1] + b',"annotations":[')
        self.num_masks = 0

    def add(self, image_id: int, annotations: list[dict[str, Any]]) -> None:
        for annotation in annotations:
            self._file.write(b"," if self.num_masks else b"")
            self.num_masks += 1
            self._file.write(orjson.dumps(annotation_record(self.num_masks, image_id, annotation)))

    def close(self) -> None:
        self._file.write(b"]}")
        self._file.close()


def step_generate(args: argparse.Namespace) -> dict[str, Any]:
    """Images, the shard lines of the new path and the inline json of the old one, from the
    same lines (so the same masks, scores and 4-decimal embeddings)."""
    count, set_dir = args.images[0], args.set_dir
    write_images(set_dir / "images", count, args.height, args.width)
    records = [
        {"id": i + 1, "file_name": image_name(i), "height": args.height, "width": args.width}
        for i in range(count)
    ]
    old = InlineJsonWriter(set_dir / "old.json", records)
    lines_s, rle_chars, batch = 0.0, 0, []
    start = time.perf_counter()
    with ShardDirectory(shard_dir_for(set_dir / "new.json")).open_writer(0) as shard:
        for index in range(count):
            proposals = synthetic_proposals(args, index)
            line_start = time.perf_counter()
            line = proposals_to_line(
                index + 1, image_name(index), args.height, args.width, proposals
            )
            lines_s += time.perf_counter() - line_start
            rle_chars += sum(len(a["segmentation"]["counts"]) for a in line["annotations"])
            old.add(index + 1, line["annotations"])
            batch.append(line)
            if len(batch) == SHARD_BATCH or index == count - 1:
                shard.write_batch(batch)
                batch = []
    old.close()
    return {
        "seconds": time.perf_counter() - start,
        "lines_s_per_image": lines_s / count,
        "num_images": count,
        "num_masks": old.num_masks,
        "rle_chars_per_mask": rle_chars / old.num_masks,
    }


# ---- the measured steps, each in its own process ----------------------------------------------


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def json_file(args: argparse.Namespace) -> Path:
    return args.set_dir / f"{args.path}.json"


def step_imports(args: argparse.Namespace) -> dict[str, Any]:
    """Nothing: the modules this script imports at the top are the baseline."""
    return {}


def step_merge(args: argparse.Namespace) -> dict[str, Any]:
    output = args.set_dir / "new.json"
    start = time.perf_counter()
    summary = merge_shards(
        ShardDirectory(shard_dir_for(output)),
        list(range(1, args.images[0] + 1)),
        {"embeddings": "store"},
        output,
    )
    return {
        "seconds": time.perf_counter() - start,
        "num_images": summary.num_images,
        "num_masks": summary.num_masks,
    }


def step_validate(args: argparse.Namespace) -> dict[str, Any]:
    # Imported here, so that a validator that cannot be imported fails this step only.
    from uis_d2.data import validation

    path = json_file(args)
    start = time.perf_counter()
    if args.path == "new":
        report = validation.check_coco_json(path, kind="pseudo")
    else:  # today's path: the whole file as Python objects, the collector paused as it was
        gc.disable()
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        report = validation.ValidationReport(path=str(path))
        validation.validate_coco_dict(data, report, kind="pseudo")
        report.raise_if_problems()
    return {
        "seconds": time.perf_counter() - start,
        "num_images": report.num_images,
        "num_masks": report.num_annotations,
        "embedding_dim": report.embedding_dim,
    }


def register(args: argparse.Namespace) -> str:
    """Register the set's file of this path as a pseudo-label dataset; returns its name."""
    name = f"bench_pseudo_labels_{args.path}"
    register_pseudo_labels(name, str(json_file(args)), str(args.set_dir / "images"))
    return name


def serialized_bytes(dataset: DatasetFromList) -> int:
    """Bytes of the serialized list's buffers: numpy ``_lst``/``_addr`` (detectron2 v0.6), or
    the tensors of a ``_TorchSerializedList`` held as ``_lst`` (detectron2 main)."""
    holder = dataset._lst if hasattr(dataset._lst, "_addr") else dataset
    return int(holder._lst.nbytes + holder._addr.nbytes)


def step_load(args: argparse.Namespace) -> dict[str, Any]:
    """The per-rank dataset as training holds it: the compact dataset the catalog builds while
    reading the file (new), or detectron2's DatasetFromList of load_coco_json's dicts (old)."""
    start = time.perf_counter()
    if args.path == "new":
        dataset = DatasetCatalog.get(register(args))
        loaded = end = time.perf_counter()
        dicts_peak_rss = peak_rss()
        resident = dataset.nbytes
        num_images, num_masks = len(dataset), int(dataset.num_annotations.sum())
    else:
        images = str(args.set_dir / "images")
        dicts = load_coco_json(str(json_file(args)), images, extra_annotation_keys=["score", "emb"])
        loaded = time.perf_counter()
        dicts_peak_rss = peak_rss()
        dataset = DatasetFromList(dicts, copy=False)
        end = time.perf_counter()
        resident = serialized_bytes(dataset)
        num_images, num_masks = len(dicts), sum(len(d["annotations"]) for d in dicts)
        del dicts
    gc.collect()
    return {
        "seconds": end - start,
        "dicts_s": loaded - start,
        "serialize_s": end - loaded,
        "dicts_peak_rss": dicts_peak_rss,
        "resident_bytes": resident,
        "rss_after": current_rss(),
        "num_images": num_images,
        "num_masks": num_masks,
    }


def step_mapper(args: argparse.Namespace) -> dict[str, Any]:
    """The training mapper over ``--mapper-items`` items spread over the whole set."""
    name = register(args)  # the run's config reads EMBED_DIM from the registered file
    opts = ["DATASETS.TRAIN", f"('{name}',)", "INPUT.COPY_PASTE.ENABLED", "False"]
    cfg = prepare_run_config(load_config(CONFIG, opts))
    if args.path == "new":
        dataset = DatasetCatalog.get(name)
    else:
        images = str(args.set_dir / "images")
        dicts = load_coco_json(str(json_file(args)), images, extra_annotation_keys=["score", "emb"])
        dataset = DatasetFromList(dicts, copy=False)
        del dicts
    mapper = PseudoMaskDatasetMapper(cfg, is_train=True)
    items = np.linspace(0, len(dataset) - 1, min(args.mapper_items, len(dataset))).astype(int)
    np.random.seed(SEED)
    peak_before = peak_rss()
    instances = []
    start = time.perf_counter()
    for index in items:
        mapped = mapper(dataset[int(index)])
        instances.append(len(mapped["instances"]))
        embeddings = mapped["instances"].gt_embeddings
    return {
        "s_per_item": (time.perf_counter() - start) / len(items),
        "items": len(items),
        "peak_rss_before": peak_before,
        "instances_per_item": float(np.mean(instances)),
        "embed_dim": cfg.MODEL.SOLOV2.EMBED_DIM,
        "mapped_embedding_dim": int(embeddings.shape[1]),
    }


STEPS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "imports": step_imports,
    "generate": step_generate,
    "merge": step_merge,
    "validate": step_validate,
    "load": step_load,
    "mapper": step_mapper,
}


def run_step_here(args: argparse.Namespace) -> None:
    """The child's side: run one step, print its figures with the RSS at its start and its
    process's peak as the last line of stdout."""
    rss_start = current_rss()
    result = STEPS[args.step](args)
    print(json.dumps({**result, "rss_start": rss_start, "peak_rss": peak_rss()}))


def run_child(
    args: argparse.Namespace, step: str, images: int, set_dir: Path, path: str | None = None
) -> dict[str, Any]:
    """Run ``step`` in a fresh process; {"error": ...} with its stderr's tail if it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--step", step]
    command += ["--images", str(images), "--set-dir", str(set_dir)]
    command += ["--masks", str(args.masks), "--dim", str(args.dim)]
    command += ["--height", str(args.height), "--width", str(args.width)]
    command += ["--mapper-items", str(args.mapper_items)]
    command += ["--path", path] if path else []
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return {"error": f"exit status {done.returncode}:\n{tail}", "wall_s": wall_s}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall_s": wall_s}


# ---- the parent: sets, figures, tables, targets -----------------------------------------------


def measure_set(args: argparse.Namespace, count: int, set_dir: Path) -> dict[str, Any]:
    """Every step on one set size; the set is removed afterwards unless --keep."""
    runs: dict[str, Any] = {}

    def run(key: str, step: str, path: str | None = None) -> None:
        runs[key] = result = run_child(args, step, count, set_dir, path)
        shown = "failed" if "error" in result else f"{result['wall_s']:.1f} s"
        print(f"  [{count} images] {key}: {shown}", flush=True)

    run("generate", "generate")
    if "error" not in runs["generate"]:
        run("merge", "merge")
        if not args.keep:
            shutil.rmtree(shard_dir_for(set_dir / "new.json"), ignore_errors=True)
        for path in PATHS:
            for step in ("validate", "load", "mapper"):
                run(f"{path}_{step}", step, path)
    runs["files"] = {
        path: {
            "json_bytes": file_size(set_dir / f"{path}.json"),
            "store_bytes": file_size(embedding_store_path(set_dir / f"{path}.json")),
        }
        for path in PATHS
    }
    if not args.keep:
        shutil.rmtree(set_dir, ignore_errors=True)
    return runs


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def figures_of(runs: dict[str, Any], path: str, count: int) -> dict[str, float | None]:
    """The FIGURES of one path on one set (None where a step failed or does not apply)."""

    def get(key: str, field: str) -> float | None:
        value = runs.get(key, {}).get(field)
        return None if value is None else float(value)

    merge = path == "new"
    resident = get(f"{path}_load", "resident_bytes")
    return {
        **runs["files"][path],
        "merge_s": get("merge", "seconds") if merge else None,
        "merge_peak_rss": get("merge", "peak_rss") if merge else None,
        "validate_s": get(f"{path}_validate", "seconds"),
        "validate_peak_rss": get(f"{path}_validate", "peak_rss"),
        "load_s": get(f"{path}_load", "seconds"),
        "dicts_s": get(f"{path}_load", "dicts_s"),
        "load_peak_rss": get(f"{path}_load", "peak_rss"),
        "dicts_peak_rss": get(f"{path}_load", "dicts_peak_rss"),
        "load_rss_after": get(f"{path}_load", "rss_after"),
        "resident_bytes": resident,
        "resident_per_image": None if resident is None else resident / count,
        "mapper_s_per_item": get(f"{path}_mapper", "s_per_item"),
        "mapper_peak_rss": get(f"{path}_mapper", "peak_rss"),
    }


def linear_fit(sizes: list[int], values: list[float | None]) -> tuple[float, float] | None:
    """(per-image slope, value at COCO_IMAGES) of a least-squares line through the sizes."""
    if any(v is None for v in values):
        return None
    slope, intercept = np.polyfit(np.asarray(sizes, float), np.asarray(values, float), 1)
    return float(slope), float(slope * COCO_IMAGES + intercept)


def ratio(new: float | None, old: float | None) -> float | None:
    return None if new is None or not old else new / old


def fmt(value: float | None, unit: str, per_image: bool = False) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1e3:.3f} ms" if per_image or value < 1 else f"{value:.2f} s"
    return f"{value:,.0f} B" if per_image or abs(value) < 1e5 else f"{value / MB:,.1f} MB"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [columns, *rows]) for i in range(len(columns))]
    print(f"\n{title}")
    for row in [columns, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        print("  " + "  ".join(cells))


def measured_table(sizes: list[int], figures: dict[str, dict[int, dict]]) -> None:
    columns = ["figure"]
    for count in sizes:
        columns += [f"new {count}", f"old {count}", "new/old"]
    rows = []
    for key, label, unit, extrapolated in FIGURES:
        row = [label]
        for count in sizes:
            new, old = figures["new"][count][key], figures["old"][count][key]
            per_item = not extrapolated
            row += [fmt(new, unit, per_item), fmt(old, unit, per_item), fmt_ratio(ratio(new, old))]
        rows.append(row)
    print_table("measured (peak RSS counts the interpreter and imports)", columns, rows)


def extrapolate(sizes: list[int], figures: dict[str, dict[int, dict]]) -> dict[str, dict]:
    """path -> key -> {"slope", "at_coco"} for the extrapolated FIGURES."""
    return {
        path: {
            key: dict(zip(("slope", "at_coco"), fit)) if fit else None
            for key, _, _, extrapolated in FIGURES
            if extrapolated
            for fit in [linear_fit(sizes, [figures[path][n][key] for n in sizes])]
        }
        for path in PATHS
    }


def extrapolation_table(fits: dict[str, dict]) -> None:
    columns = ["figure", "new /image", "old /image", "new/old"]
    columns += [f"new @{COCO_IMAGES:,}", f"old @{COCO_IMAGES:,}", "new/old"]
    rows = []
    for key, label, unit, extrapolated in FIGURES:
        if not extrapolated:
            continue
        new, old = fits["new"][key] or {}, fits["old"][key] or {}
        row = [label]
        for field, per_image in (("slope", True), ("at_coco", False)):
            a, b = new.get(field), old.get(field)
            row += [fmt(a, unit, per_image), fmt(b, unit, per_image), fmt_ratio(ratio(a, b))]
        rows.append(row)
    print_table(f"per-image slopes and extrapolation to {COCO_IMAGES:,} images", columns, rows)


def at_coco(fits: dict[str, dict | None], key: str) -> float | None:
    fit = fits[key]
    return None if fit is None else fit["at_coco"]


def target(
    name: str,
    value: float | None,
    limit: float | None,
    unit: str,
    per_item: bool = False,
    rss: bool = False,
) -> dict[str, Any]:
    """``per_item``: bytes per image or mask; ``rss``: a process's peak, shown with its part
    above the imports-only child."""
    passed = None if value is None or limit is None else bool(value <= limit)
    return {
        "target": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "per_item": per_item,
        "rss": rss,
        "passed": passed,
    }


def spread(values: list[float | None]) -> float | None:
    """max / min, None when a value is missing."""
    return None if None in values else max(values) / min(values)


def path_targets(
    path: str, sizes: list[int], figures: dict[int, dict], fits: dict, masks: float
) -> list[dict[str, Any]]:
    """One path's targets at COCO_IMAGES (``masks`` there): value, limit, passed (None: a
    figure is missing)."""
    peaks = [figures[n]["validate_peak_rss"] for n in sizes]
    peak_at_coco = at_coco(fits, "validate_peak_rss")
    resident = at_coco(fits, "resident_bytes")
    carrier = "store_bytes" if path == "new" else "json_bytes"  # old: inline in the json
    embeddings = at_coco(fits, carrier)
    return [
        target("validation peak RSS flat: max/min over the sizes", spread(peaks), 1.10, "ratio"),
        target(
            "validation peak RSS flat: max/min over the sizes and 241k",
            spread([*peaks, peak_at_coco]),
            1.10,
            "ratio",
        ),
        target("validation peak RSS < 1 GB", peak_at_coco, GB, "bytes", rss=True),
        target(
            "serialized dataset <= 8 KB per image",
            None if resident is None else resident / COCO_IMAGES,
            8 * KB,
            "bytes",
            per_item=True,
        ),
        target(
            "per-rank load peak RSS <= 2 x resident + 1 GB",
            at_coco(fits, "load_peak_rss"),
            None if resident is None else 2 * resident + GB,
            "bytes",
            rss=True,
        ),
        target(
            f"embeddings ({carrier}) <= 1.6 KB per mask",
            None if embeddings is None else embeddings / masks,
            1.6 * KB,
            "bytes",
            per_item=True,
        ),
        target("per-rank load <= 3 minutes", at_coco(fits, "load_s"), 180.0, "s"),
    ]


def print_targets(targets: dict[str, list[dict[str, Any]]], baseline_rss: float | None) -> None:
    print(f"\ntargets at {COCO_IMAGES:,} images (the new path must pass; old for comparison)")
    for path, checks in targets.items():
        for t in checks:
            verdict = {True: "PASS", False: "FAIL", None: "N/A "}[t["passed"]]
            if t["unit"] == "ratio":
                value, limit = fmt_ratio(t["value"]), fmt_ratio(t["limit"])
            else:
                value = fmt(t["value"], t["unit"], t["per_item"])
                limit = fmt(t["limit"], t["unit"], t["per_item"])
            if t["rss"] and t["value"] is not None and baseline_rss is not None:
                value += f" ({fmt(t['value'] - baseline_rss, 'bytes')} above the imports)"
            print(f"  {verdict}  {path}: {t['target']}: {value} (limit {limit})")


def consistency_warnings(sizes: list[int], sets: dict[int, dict[str, Any]]) -> list[str]:
    """Counts that a step reports and that differ from what was generated."""
    warnings = []
    for count in sizes:
        runs = sets[count]
        expected = {"num_images": count, "num_masks": runs["generate"].get("num_masks")}
        for key, result in runs.items():
            for field, value in expected.items():
                if field in result and result[field] != value:
                    warnings.append(
                        f"{count} images, {key}: {field} = {result[field]}, generated {value}"
                    )
        for path in PATHS:
            mapper = runs.get(f"{path}_mapper", {})
            if "embed_dim" in mapper and mapper["embed_dim"] != mapper["mapped_embedding_dim"]:
                warnings.append(f"{count} images, {path} mapper: EMBED_DIM {mapper['embed_dim']}")
    return warnings


def print_summary(
    args: argparse.Namespace, sizes: list[int], sets: dict[int, dict], baseline: dict
) -> None:
    print(f"\nbaseline child (imports only): peak RSS {fmt(baseline.get('peak_rss'), 'bytes')}")
    for count in sizes:
        generate = sets[count]["generate"]
        print(
            f"set of {count} images: {generate.get('num_masks')} masks of {args.height}x"
            f"{args.width} (RLE counts {generate.get('rle_chars_per_mask', 0):.0f} characters per "
            f"mask on average), {args.dim}-d embeddings; generated in {generate['wall_s']:.0f} s "
            f"(proposals_to_line {fmt(generate.get('lines_s_per_image'), 's', True)}/image)"
        )


def main() -> None:
    args = parse_args()
    if args.step:
        run_step_here(args)
        return
    started = time.perf_counter()
    sizes = sorted(set(args.images))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_pseudo_labels_"))
    workdir.mkdir(parents=True, exist_ok=True)
    baseline = run_child(args, "imports", sizes[0], workdir)
    sets = {n: measure_set(args, n, workdir / f"images{n}") for n in sizes}
    if args.keep:
        print(f"sets kept in {workdir}")
    elif not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)

    figures = {path: {n: figures_of(sets[n], path, n) for n in sizes} for path in PATHS}
    fits = extrapolate(sizes, figures)
    generated = sets[sizes[-1]]["generate"]
    masks_per_image = generated.get("num_masks", args.masks * sizes[-1]) / sizes[-1]
    targets = {
        path: path_targets(path, sizes, figures[path], fits[path], masks_per_image * COCO_IMAGES)
        for path in PATHS
    }
    errors = {
        f"{n} images, {key}": run["error"]
        for n in sizes
        for key, run in sets[n].items()
        if "error" in run
    }
    warnings = consistency_warnings(sizes, sets)

    print_summary(args, sizes, sets, baseline)
    measured_table(sizes, figures)
    extrapolation_table(fits)
    print_targets(targets, baseline.get("peak_rss"))
    for warning in warnings:
        print(f"WARNING: {warning}")
    for where, error in errors.items():
        print(f"\nERROR in {where}: {error}")
    wall_s = time.perf_counter() - started
    print(f"\nwall time {wall_s:.0f} s")
    if args.json_out:
        result = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "baseline": baseline,
            "steps": sets,
            "figures": figures,
            "extrapolation": fits,
            "targets": targets,
            "warnings": warnings,
            "errors": errors,
            "wall_s": wall_s,
        }
        atomic_write_json(args.json_out, result, indent=1)


if __name__ == "__main__":
    main()
