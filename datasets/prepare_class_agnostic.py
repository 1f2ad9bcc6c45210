#!/usr/bin/env python
"""Turn any COCO instances json into a single-category ('object') json.

Each annotation keeps its original category as 'orig_category_id' and the original category
list is kept as 'orig_categories', so per-category analyses still work on the output.
"""

from __future__ import annotations

import argparse
from typing import Any

import uis_d2  # noqa: F401  (compat fixes before anything imports detectron2)
from uis_d2.data.pseudo_labels import CATEGORIES, OBJECT_CATEGORY_ID
from uis_d2.utils.files import atomic_write_json, read_json


def to_class_agnostic(coco: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``coco`` whose annotations all have category 1 ('object')."""
    for field in ("images", "annotations", "categories"):
        if field not in coco:
            raise ValueError(f"{source} has no '{field}' field: not a COCO instances json")
    annotations = [
        {**a, "category_id": OBJECT_CATEGORY_ID, "orig_category_id": a["category_id"]}
        for a in coco["annotations"]
    ]
    return {
        **coco,
        "annotations": annotations,
        "categories": [{**category, "supercategory": "object"} for category in CATEGORIES],
        "orig_categories": coco["categories"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="COCO instances json")
    parser.add_argument("--output", required=True, help="class-agnostic json to write")
    args = parser.parse_args(argv)
    coco = read_json(args.input, "COCO json")
    atomic_write_json(args.output, to_class_agnostic(coco, args.input))
    print(f"wrote {args.output}: {len(coco['annotations'])} annotations, one category 'object'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
