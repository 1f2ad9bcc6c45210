#!/usr/bin/env python
"""Draw a trained model's instance masks over images.

    tools/demo.py --config-file configs/coco/solov2_R101_densecl_engstler.yaml \\
        --input photo.jpg more_images/ --output demo_out \\
        --opts MODEL.WEIGHTS output/coco/solov2_R101_densecl_engstler/round1/model_final.pth

Writes DIR/<image name>.png per input image (folders are expanded to the images they hold, in
sub-folders too, as ``folder:PATH`` datasets list them: uis_d2/data/image_folder.py), or for the
first ``--overlays N`` only.

``--json-out FILE`` also writes every prediction (all scores) as a COCO-format json: ``images``
(file names relative to the input folder, ids as ``folder:`` datasets give them, so the file
lines up with generate_proposals' output for the same folder) and ``annotations`` (RLE masks,
boxes, scores) that tools/evaluate_json.py evaluates. Each finished image is appended to
``FILE.partial.jsonl`` first, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2
from pycocotools import mask as mask_utils
from tqdm import tqdm

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.utils.logger import setup_logger

from uis_d2.api import draw_instances, load_predictor
from uis_d2.config.loading import ConfigError, model_num_classes
from uis_d2.data.image_folder import folder_image_id, list_images
from uis_d2.data.image_io import BadImageError, read_image
from uis_d2.data.pseudo_labels import file_header
from uis_d2.evaluation.evaluator import instances_to_coco_results
from uis_d2.utils.files import atomic_write_bytes, atomic_write_json

logger = logging.getLogger("uis_d2.demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True, help="a config, or a training run folder")
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True, type=Path, help="folder for the overlays")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument(
        "--overlays", type=int, default=-1, help="draw the first N images only (-1: all)"
    )
    parser.add_argument("--json-out", type=Path, help="also write every prediction (COCO json)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ...")
    return parser.parse_args(argv)


def expand_inputs(inputs: list[str]) -> list[tuple[Path, str]]:
    """(path, name) per image: files as given (name = the file's name), folders replaced by
    their images (``list_images``: recursive, sorted; name = the path relative to the folder).
    Missing paths and folders without images are errors."""
    images: list[tuple[Path, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images += [(path, path.relative_to(item).as_posix()) for path in list_images(item)]
        elif item.is_file():
            images.append((item, item.name))
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    return images


class PredictionLog:
    """Per-image predictions appended to ``FILE.partial.jsonl`` as they are made, so a rerun
    skips finished images; ``finish`` writes the COCO json and removes the log."""

    def __init__(self, json_out: Path, class_aware: bool) -> None:
        self.json_out = json_out
        self.class_aware = class_aware
        self.partial = json_out.with_name(json_out.name + ".partial.jsonl")
        self.records: dict[str, dict] = {}
        if self.partial.exists():
            for line in self.partial.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the line a kill cut short
                    continue
                self.records[record["file_name"]] = record

    def add(self, name: str, height: int, width: int, instances) -> None:
        image_id = folder_image_id(name)
        record = {
            "file_name": name,
            "id": image_id,
            "height": height,
            "width": width,
            "results": instances_to_coco_results(instances, image_id, self.class_aware),
        }
        with open(self.partial, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.records[name] = record

    def finish(self, failures: list[str]) -> None:
        images, annotations = [], []
        for record in sorted(self.records.values(), key=lambda r: r["file_name"]):
            images.append({k: record[k] for k in ("id", "file_name", "height", "width")})
            for result in record["results"]:
                area = int(mask_utils.area(result["segmentation"]))
                annotations.append(
                    {"id": len(annotations) + 1, "iscrowd": 0, "area": area, **result}
                )
        info = {"description": "tools/demo.py predictions", "skipped": failures}
        atomic_write_json(self.json_out, {**file_header(info, images), "annotations": annotations})
        self.partial.unlink(missing_ok=True)


def overlay_names(names: list[str]) -> list[str]:
    """Output names from the inputs' stems, numbered where two inputs share a stem."""
    out, seen = [], {}
    for name in names:
        stem = Path(name).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        out.append(f"{stem}.png" if count == 0 else f"{stem}_{count}.png")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger(name="uis_d2")
    try:
        images = expand_inputs(args.input)
        predictor = load_predictor(args.config_file, opts=args.opts)
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)

    class_aware = model_num_classes(predictor.cfg) > 1  # pseudo-classes as category_id 0..K-1
    log = PredictionLog(args.json_out, class_aware) if args.json_out else None
    limit = len(images) if args.overlays < 0 else args.overlays
    failures: list[str] = []
    names = overlay_names([name for _, name in images])
    for index, ((path, name), png_name) in enumerate(
        zip(tqdm(images, desc="demo", unit="img"), names)
    ):
        draw = index < limit and not (args.output / png_name).exists()
        if not draw and (log is None or name in log.records):
            continue  # done in an earlier run
        try:
            bgr = read_image(path, "BGR")
        except BadImageError as err:
            if predictor.cfg.INPUT.BAD_IMAGE_POLICY == "fail":
                raise
            logger.warning(f"skipped: {err}")
            failures.append(name)
            continue
        instances = predictor(bgr)["instances"].to("cpu")
        if log is not None and name not in log.records:
            log.add(name, bgr.shape[0], bgr.shape[1], instances)
        if draw:
            drawn = draw_instances(bgr[:, :, ::-1], instances, args.confidence_threshold)
            ok, png = cv2.imencode(".png", drawn[:, :, ::-1])
            if not ok:
                raise RuntimeError(f"PNG encoding failed for {args.output / png_name}")
            atomic_write_bytes(args.output / png_name, png.tobytes())
    if log is not None:
        log.finish(failures)
        print(f"wrote the predictions of {len(log.records)} images to {args.json_out}")
    print(f"overlays of the first {min(limit, len(images))} images in {args.output}")
    if failures:
        print(
            f"skipped {len(failures)} unreadable images (INPUT.BAD_IMAGE_POLICY skip): {failures}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
