#!/usr/bin/env python
"""Build the COCO20k ground truth: the 19,817 train2014 images of the object-discovery
benchmark, with crowd annotations dropped (engstler2023 appendix A.2.2; FreeSOLO Table 4).

The image list is the benchmark's published file list (one train2014 file name or image id
per line, e.g. "COCO_train2014_000000000009.jpg"). Categories stay as in COCO: the dataset is
registered class-agnostically (uis_coco20k), and the originals serve per-category analyses.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import uis_d2  # noqa: F401  (compat fixes before anything imports detectron2)
from uis_d2.data.datasets import datasets_root
from uis_d2.utils.files import atomic_write_json, read_json

EXPECTED_IMAGE_COUNT = 19_817
_DIGITS = re.compile(r"(\d+)")


def read_image_ids(list_file: str | Path) -> list[int]:
    """Image ids from a list of file names or ids; blank lines and '#' comments are skipped."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"COCO20k image list not found: {list_file}")
    ids = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        digit_runs = _DIGITS.findall(Path(entry).stem)
        if not digit_runs:
            raise ValueError(f"{list_file}:{number}: no image id in {entry!r}")
        ids.append(int(digit_runs[-1]))
    return ids


def build_coco20k(instances: dict[str, Any], image_ids: list[int], source: str) -> dict[str, Any]:
    """Restrict ``instances`` to ``image_ids`` and drop crowd annotations."""
    wanted = set(image_ids)
    images = [image for image in instances["images"] if image["id"] in wanted]
    missing = wanted - {image["id"] for image in images}
    if missing:
        examples = ", ".join(str(i) for i in sorted(missing)[:5])
        raise ValueError(f"{len(missing)} listed image ids are not in {source} (e.g. {examples})")
    annotations = [
        a
        for a in instances.get("annotations", [])
        if a["image_id"] in wanted and not a.get("iscrowd", 0)
    ]
    return {
        "info": {"description": "COCO20k (train2014 subset, crowd annotations removed)"},
        "licenses": instances.get("licenses", []),
        "images": images,
        "annotations": annotations,
        "categories": instances["categories"],
    }


def main(argv: list[str] | None = None) -> int:
    coco = datasets_root() / "coco"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--instances",
        default=str(coco / "annotations" / "instances_train2014.json"),
        help="COCO instances_train2014.json (default: under $DETECTRON2_DATASETS/coco)",
    )
    parser.add_argument("--image-list", required=True, help="COCO20k file-name or id list")
    parser.add_argument(
        "--output",
        default=str(coco / "annotations" / "coco20k_train2014.json"),
        help="output json (default: where uis_coco20k is registered)",
    )
    args = parser.parse_args(argv)
    image_ids = read_image_ids(args.image_list)
    instances = read_json(args.instances, "COCO train2014 instances json")
    coco20k = build_coco20k(instances, image_ids, args.instances)
    atomic_write_json(args.output, coco20k)
    count = len(coco20k["images"])
    print(f"wrote {args.output}: {count} images, {len(coco20k['annotations'])} annotations")
    if count != EXPECTED_IMAGE_COUNT:
        print(f"warning: COCO20k has {EXPECTED_IMAGE_COUNT} images, this list gives {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
