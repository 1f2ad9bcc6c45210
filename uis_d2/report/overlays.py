"""Draw instance masks over images, so predictions and ground truth can be compared by eye."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from uis_d2.data.image_io import read_image
from uis_d2.utils.masks import rle_to_mask


def instance_colours(n: int, seed: int = 0) -> np.ndarray:
    """``n`` well-separated bright colours (golden-ratio hue steps), stable across calls."""
    if n == 0:  # an image without masks (OpenCV rejects an empty conversion)
        return np.zeros((0, 3), dtype=np.uint8)
    hues = (np.arange(n) * 0.618033988749895 + 0.1 * seed) % 1.0
    hsv = np.stack([hues * 179, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def draw_masks(image: np.ndarray, masks: list[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Blend each mask in its own colour and outline it; ``image`` is RGB uint8."""
    out = image.astype(np.float32)
    colours = instance_colours(len(masks))
    for mask, colour in zip(masks, colours):
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    out = out.astype(np.uint8)
    for mask, colour in zip(masks, colours):
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), 1)
    return out


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((18, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def annotations_by_image(coco_json: dict, min_score: float = 0.0) -> dict[int, list[dict]]:
    """Group a COCO json's annotations (or a results list) by image id, best score first."""
    anns = coco_json["annotations"] if isinstance(coco_json, dict) else coco_json
    grouped: dict[int, list[dict]] = defaultdict(list)
    for ann in anns:
        if ann.get("score", 1.0) >= min_score:
            grouped[ann["image_id"]].append(ann)
    for items in grouped.values():
        items.sort(key=lambda a: -a.get("score", 1.0))
    return grouped


def write_comparison_grids(
    gt: dict,
    panels: dict[str, dict[int, list[dict]]],
    image_root: Path,
    out_dir: Path,
    image_ids: list[int],
    first_title: str = "ground truth",
) -> list[Path]:
    """One PNG per image: the ground truth (``gt``'s annotations; none and ``first_title``
    "image" for images without ground truth), then one panel per named prediction set."""
    images = {img["id"]: img for img in gt["images"]}
    gt_by_image = annotations_by_image(gt)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image_id in image_ids:
        info = images[image_id]
        image = read_image(image_root / info["file_name"])
        row = [_panel(image, gt_by_image.get(image_id, []), first_title)]
        for name, by_image in panels.items():
            row.append(_panel(image, by_image.get(image_id, []), name))
        path = out_dir / f"{Path(info['file_name']).stem}.png"
        grid = np.concatenate(row, axis=1)
        cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        written.append(path)
    return written


def _panel(image: np.ndarray, anns: list[dict], title: str) -> np.ndarray:
    masks = [rle_to_mask(a["segmentation"]) for a in anns]
    panel = draw_masks(image, masks)
    gap = np.full((panel.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([_label(panel, f"{title} ({len(masks)})"), _label(gap, "")], axis=1)
