"""Hand-made ground truth and predictions shared by the evaluation tests (values worked by hand)."""

from __future__ import annotations

import numpy as np

from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle


def rect_mask(height: int, width: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


def annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray, **extra) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": mask_to_rle(mask),
        "bbox": mask_to_box_xywh(mask),
        "area": float(mask.sum()),
        "iscrowd": 0,
        **extra,
    }


def result(image_id: int, mask: np.ndarray, score: float = 1.0, category_id: int = 1) -> dict:
    return {
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": mask_to_rle(mask),
        "bbox": mask_to_box_xywh(mask),
        "score": score,
    }


def coco_dataset(images: list[tuple[int, int, int]], annotations: list[dict]) -> dict:
    """images: (id, height, width)."""
    return {
        "images": [
            {"id": i, "height": h, "width": w, "file_name": f"{i}.png"} for i, h, w in images
        ],
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)],
    }


def partial_case() -> tuple[dict, list[dict]]:
    """One 128x128 image, a small (100 px) and a medium (1600 px) object; a single prediction,
    with a category the ground truth lacks, covers the small one exactly.

    By hand: AR1 = AR10 = AR100 = 50 (one of two found at every IoU); AP = 51/101 (precision 1
    up to recall 0.5, i.e. on 51 of COCO's 101 recall points, 0 beyond); APs = ARs = 100;
    APm = ARm = 0; APl, ARl undefined (no large object).
    """
    small = rect_mask(128, 128, (5, 15), (5, 15))
    medium = rect_mask(128, 128, (40, 80), (40, 80))
    gt = coco_dataset([(1, 128, 128)], [annotation(1, 1, 1, small), annotation(2, 1, 2, medium)])
    return gt, [result(1, small, score=0.9, category_id=99)]


PARTIAL_EXPECTED = {
    "AP": 100 * 51 / 101,
    "AP50": 100 * 51 / 101,
    "AP75": 100 * 51 / 101,
    "APs": 100.0,
    "APm": 0.0,
    "AR1": 50.0,
    "AR10": 50.0,
    "AR100": 50.0,
    "ARs": 100.0,
    "ARm": 0.0,
}


def random_case(seed: int, num_images: int = 6, size: int = 64) -> tuple[dict, list[dict]]:
    """Random boxes as masks, some crowd, with jittered copies and random clutter as predictions."""
    rng = np.random.default_rng(seed)

    def random_mask() -> np.ndarray:
        r0, c0 = rng.integers(0, size - 4, 2)
        r1, c1 = rng.integers(r0 + 2, size + 1), rng.integers(c0 + 2, size + 1)
        return rect_mask(size, size, (r0, r1), (c0, c1))

    annotations, predictions = [], []
    for image_id in range(1, num_images + 1):
        objects = [random_mask() for _ in range(rng.integers(0, 5))]
        for mask in objects:
            crowd = int(rng.random() < 0.15)
            annotations.append(
                annotation(len(annotations) + 1, image_id, int(rng.integers(1, 4)), mask)
                | {"iscrowd": crowd}
            )
        for _ in range(rng.integers(0, 12)):
            if objects and rng.random() < 0.6:
                mask = np.roll(objects[rng.integers(len(objects))], rng.integers(-3, 4), axis=1)
            else:
                mask = random_mask()
            predictions.append(result(image_id, mask, score=round(float(rng.random()), 1)))
    images = [(i, size, size) for i in range(1, num_images + 1)]
    return coco_dataset(images, annotations), predictions


def count_case() -> tuple[dict, list[dict]]:
    """Recall-by-count case; per-instance matched IoU (thresholds passed of 10) by hand:

    image 1: cats A (100 px, exact proposal: 10/10) and B (200 px, only a proposal covering A and
      B: IoU 2/3, 4/10) -> bucket 2; dog D (proposal shifted one column: IoU 56/72, 6/10)
      -> bucket 1.
    image 2: overlapping cats F, G and one proposal with IoU 90/110 to both: one-to-one gives
      one of them 7/10 and the other 0 -> bucket 2; dog H without proposal (0) -> bucket 1.
    image 3: seven class-3 squares, three found exactly (one given as a polygon) -> bucket 6+;
      a crowd annotation of class 3 is left out.
    image 4: no objects, one stray proposal.
    Buckets: "1": (6+0)/20 = 30 %, "2": (10+4+7+0)/40 = 52.5 %, "6+": 30/70 = 42.857 %,
    all: 57/130 = 43.846 %; buckets 3-5 are empty.
    """
    a = rect_mask(64, 64, (0, 10), (0, 10))
    b = rect_mask(64, 64, (20, 30), (20, 40))
    d = rect_mask(64, 64, (40, 48), (40, 48))
    f = rect_mask(32, 32, (0, 10), (0, 10))
    g = rect_mask(32, 32, (0, 10), (2, 12))
    h = rect_mask(32, 32, (20, 28), (20, 28))
    squares = [rect_mask(64, 64, (8 * i, 8 * i + 4), (0, 4)) for i in range(7)]
    anns = [
        annotation(1, 1, 1, a),
        annotation(2, 1, 1, b),
        annotation(3, 1, 2, d),
        annotation(4, 2, 1, f),
        annotation(5, 2, 1, g),
        annotation(6, 2, 2, h),
    ]
    for i, square in enumerate(squares):
        anns.append(annotation(10 + i, 3, 3, square))
    anns[6]["segmentation"] = [[0.0, 0.0, 4.0, 0.0, 4.0, 4.0, 0.0, 4.0]]  # = squares[0]
    anns.append(annotation(20, 3, 3, rect_mask(64, 64, (0, 64), (30, 64)), iscrowd=1))
    proposals = [
        result(1, a),
        result(1, a | b),
        result(1, np.roll(d, 1, axis=1)),
        result(2, rect_mask(32, 32, (0, 10), (1, 11))),
        *(result(3, square) for square in squares[:3]),
        result(4, rect_mask(16, 16, (0, 5), (0, 5))),
    ]
    gt = coco_dataset([(1, 64, 64), (2, 32, 32), (3, 64, 64), (4, 16, 16)], anns)
    return gt, proposals


COUNT_EXPECTED_AR = {"1": 30.0, "2": 52.5, "6+": 100 * 3 / 7, "all": 100 * 57 / 130}
COUNT_EXPECTED_INSTANCES = {"1": 2, "2": 4, "3": 0, "4": 0, "5": 0, "6+": 7, "all": 13}
