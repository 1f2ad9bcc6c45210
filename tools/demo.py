#!/usr/bin/env python
"""Draw a trained model's instance masks over images.

    tools/demo.py --config-file configs/coco/solov2_R101_densecl_engstler.yaml \\
        --input photo.jpg more_images/ --output demo_out \\
        --opts MODEL.WEIGHTS output/coco/solov2_R101_densecl_engstler/round1/model_final.pth

Writes DIR/<image name>.png per input image (folders are expanded to the images they hold).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from uis_d2.config import load_config
from uis_d2.config.loading import ConfigError
from uis_d2.data.image_io import BadImageError, read_image
from uis_d2.data.pseudo_labels import THING_CLASSES
from uis_d2.engine import check_runtime
from uis_d2.engine.run_config import prepare_run_config
from uis_d2.utils.files import atomic_write_bytes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
logger = logging.getLogger("uis_d2.demo")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument("--output", required=True, type=Path, help="folder for the overlays")
    parser.add_argument("--confidence-threshold", type=float, default=0.3)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ...")
    return parser.parse_args(argv)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files as given, folders replaced by their images (sorted); missing paths are errors."""
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    return paths


def overlay_names(paths: list[Path]) -> list[str]:
    """Output names from the input stems, numbered where two inputs share a stem."""
    names, seen = [], {}
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        names.append(f"{path.stem}.png" if count == 0 else f"{path.stem}_{count}.png")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logger(name="uis_d2")
    try:
        cfg = load_config(args.config_file, args.opts)
        check_runtime(cfg)
        paths = expand_inputs(args.input)
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = prepare_run_config(cfg, require_training_data=False)
    predictor = DefaultPredictor(cfg)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "uis_demo")
    if not metadata.get("thing_classes", None):
        metadata.thing_classes = THING_CLASSES
    args.output.mkdir(parents=True, exist_ok=True)

    failures = 0
    for path, name in zip(tqdm(paths, desc="demo", unit="img"), overlay_names(paths)):
        try:
            bgr = read_image(path, "BGR")
        except BadImageError as err:
            logger.warning(f"skipped: {err}")
            failures += 1
            continue
        instances = predictor(bgr)["instances"].to("cpu")
        instances = instances[instances.scores >= args.confidence_threshold]
        visualizer = Visualizer(bgr[:, :, ::-1], metadata, instance_mode=ColorMode.IMAGE)
        drawn = visualizer.draw_instance_predictions(instances).get_image()
        ok, png = cv2.imencode(".png", drawn[:, :, ::-1])
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {args.output / name}")
        atomic_write_bytes(args.output / name, png.tobytes())
    print(f"wrote {len(paths) - failures} overlays to {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
