"""Embedded synthetic instance-segmentation data: a COCO-format dataset generated in seconds.

It lets the whole pipeline (proposals, SOLOv2 training, evaluation) run end to end without
downloads. Scenes are built to be learnable from colour and texture (saturated objects of six
shape/colour/texture categories on desaturated textured backgrounds) yet not trivial: pixel
noise and blur, occlusion (ground truth is the visible part only), and several instances of one
category per image, often touching, told apart only by per-instance shading and texture phase.

Everything is drawn from ``numpy.random.default_rng([seed, split, index])``, so one image does
not depend on how many others are generated, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from uis_d2.utils.files import atomic_write_bytes, atomic_write_json
from uis_d2.utils.masks import mask_to_box_xywh, mask_to_rle

IMAGE_SIDE_RANGE = (160, 320)  # inclusive, each side drawn independently
OBJECT_SIZE_RANGE = (16.0, 130.0)  # circumscribed diameter in pixels
MAX_OBJECT_FRACTION = 0.6  # of the shorter image side, so big objects still fit
MAX_OBJECTS = 8
MIN_VISIBLE_AREA = 60  # pixels: smaller visible parts would be unlearnable ground truth
MIN_VISIBLE_FRACTION = 0.3  # of an instance's own area, so occlusion never leaves slivers
PLACEMENT_ATTEMPTS = 12
TOUCHING_PROBABILITY = 0.5  # a repeated category is placed against an earlier instance
SPLIT_INDEX = {"train": 0, "val": 1}


@dataclass(frozen=True)
class Category:
    """A shape family with its own colour (hue) family and surface texture."""

    id: int
    name: str
    hue: float  # degrees
    texture: str


CATEGORIES = (
    Category(1, "disc", 0.0, "speckle"),
    Category(2, "square", 220.0, "stripes"),
    Category(3, "triangle", 120.0, "plain"),
    Category(4, "star", 45.0, "gradient"),
    Category(5, "ellipse", 300.0, "dots"),
    Category(6, "cross", 185.0, "checker"),
)


@dataclass(frozen=True)
class _PlacedObject:
    category_id: int
    radius: float
    full_area: int  # before any later occlusion


@dataclass
class SceneInstance:
    """One ground-truth instance of a rendered scene."""

    category_id: int
    mask: np.ndarray  # (H, W) bool, the visible part


def _hsv_to_rgb(hue_deg: float, saturation: float, value: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, saturation, value), np.float32)


def _unit_noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance float32 noise; uniform, which is several times faster to draw
    than Gaussian and looks the same once blurred or added per pixel.
    """
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(np.sqrt(12.0))


def _shape_outline(name: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """(K, 2) polygon vertices around the origin, circumradius about ``radius``, unrotated."""
    if name in ("disc", "ellipse"):
        minor = radius if name == "disc" else radius * rng.uniform(0.45, 0.75)
        t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
        return np.stack([radius * np.cos(t), minor * np.sin(t)], axis=1)
    if name in ("square", "triangle"):
        t = np.linspace(0.0, 2.0 * np.pi, 4 if name == "square" else 3, endpoint=False)
        return radius * np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "star":
        t = np.linspace(0.0, 2.0 * np.pi, 10, endpoint=False)
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.4, 0.55))
        return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)
    if name == "cross":
        a, r = radius * rng.uniform(0.28, 0.4), radius
        arm = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r)]
        return np.array(arm + [(-x, -y) for x, y in arm], np.float64)
    raise ValueError(f"unknown synthetic shape {name!r}")


def _shape_mask(
    name: str, shape: tuple[int, int], center: np.ndarray, radius: float, rng: np.random.Generator
) -> np.ndarray:
    """Rasterise a randomly rotated shape (sub-pixel vertex precision) into an (H, W) bool mask."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    vertices = _shape_outline(name, radius, rng) @ rotation.T + center
    canvas = np.zeros(shape, np.uint8)
    fixed_point = np.round(vertices * 16).astype(np.int32)  # shift=4 -> 1/16 pixel
    cv2.fillPoly(canvas, [fixed_point], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _texture(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(h, w) float32 modulation in about [-1, 1]; random phase and angle per instance."""
    h, w = shape
    if kind == "plain":
        return np.zeros(shape, np.float32)
    if kind == "speckle":
        noise = _unit_noise(shape, rng)
        return np.clip(cv2.GaussianBlur(noise, (0, 0), 1.2) * 2.0, -1.0, 1.0)
    # Broadcast (1, w) and (h, 1) coordinates; python-float factors keep everything float32.
    x = np.arange(w, dtype=np.float32)[None, :]
    y = np.arange(h, dtype=np.float32)[:, None]
    angle = rng.uniform(0.0, np.pi)
    cos, sin = float(np.cos(angle)), float(np.sin(angle))
    if kind == "gradient":
        u = x * cos + y * sin
        return (u - u.mean()) * (2.0 / max(float(np.ptp(u)), 1.0))
    frequency = 2.0 * np.pi / rng.uniform(5.0, 10.0)
    phase_u, phase_v = (float(p) for p in rng.uniform(0.0, 2.0 * np.pi, 2))
    wave_u = np.sin((x * (frequency * cos) + phase_u) + y * (frequency * sin))
    if kind == "stripes":
        return wave_u
    wave_v = np.sin((x * (-frequency * sin) + phase_v) + y * (frequency * cos))
    if kind == "checker":
        return np.sign(wave_u * wave_v)
    if kind == "dots":
        return np.where(wave_u * wave_v > 0.4, np.float32(1.0), np.float32(-0.3))
    raise ValueError(f"unknown synthetic texture {kind!r}")


def _background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Desaturated base colour with smooth colour blotches and an optional faint pattern."""
    h, w = shape
    base = _hsv_to_rgb(rng.uniform(0, 360), rng.uniform(0.0, 0.2), rng.uniform(0.35, 0.75))
    coarse = rng.standard_normal((h // 32 + 2, w // 32 + 2, 3), dtype=np.float32)
    # Mostly brightness blotches with a little colour; mixed at low resolution (cheap, and
    # bicubic resizing is linear, so mixing before or after it is the same).
    coarse_mix = 0.06 * coarse.mean(axis=2, keepdims=True) + 0.02 * coarse
    image = base + cv2.resize(coarse_mix, (w, h), interpolation=cv2.INTER_CUBIC)
    pattern = rng.choice(["none", "stripes", "speckle"])
    if pattern != "none":
        strength = float(rng.uniform(0.03, 0.08))
        image += strength * _texture(str(pattern), shape, rng)[..., None]
    return image


def _paint_instance(
    image: np.ndarray, mask: np.ndarray, category: Category, rng: np.random.Generator
) -> None:
    """Fill ``mask`` with the category's colour family and texture, darker towards the edge.

    The edge shading is what separates touching instances of the same category.
    """
    x, y, w, h = (int(v) for v in mask_to_box_xywh(mask))
    crop = mask[y : y + h, x : x + w]
    colour = _hsv_to_rgb(
        category.hue + rng.uniform(-12.0, 12.0), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0)
    )
    padded = np.pad(crop.astype(np.uint8), 1)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    shading = 0.7 + 0.3 * np.minimum(distance / max(0.25 * min(w, h), 1.0), 1.0)
    modulation = 1.0 + rng.uniform(0.12, 0.25) * _texture(category.texture, (h, w), rng)
    pixels = colour * (shading * modulation)[..., None]
    region = image[y : y + h, x : x + w]
    region[crop] = pixels[crop]


def _place(
    labels: np.ndarray, placed: list[_PlacedObject], category: Category, rng: np.random.Generator
) -> tuple[np.ndarray, float] | None:
    """Try positions for a new object; accept one that leaves every earlier instance enough
    visible area. Returns (full mask, radius) or None when no attempt fits.
    """
    h, w = labels.shape
    max_size = min(OBJECT_SIZE_RANGE[1], MAX_OBJECT_FRACTION * min(h, w))
    same_category = [i for i, p in enumerate(placed) if p.category_id == category.id]
    for _ in range(PLACEMENT_ATTEMPTS):
        radius = 0.5 * rng.uniform(OBJECT_SIZE_RANGE[0], max_size)
        if same_category and rng.random() < TOUCHING_PROBABILITY:
            neighbour = int(rng.choice(same_category))
            ys, xs = np.nonzero(labels == neighbour)
            direction = rng.uniform(0.0, 2.0 * np.pi)
            distance = (radius + placed[neighbour].radius) * rng.uniform(0.75, 1.0)
            offset = distance * np.array([np.cos(direction), np.sin(direction)])
            center = np.array([xs.mean(), ys.mean()]) + offset
        else:
            center = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
        mask = _shape_mask(category.name, (h, w), center, radius, rng)
        if mask.sum() >= MIN_VISIBLE_AREA and _earlier_stay_visible(labels, mask, placed):
            return mask, radius
    return None


def _earlier_stay_visible(
    labels: np.ndarray, mask: np.ndarray, placed: list[_PlacedObject]
) -> bool:
    """Whether every earlier instance keeps enough visible area once ``mask`` covers it."""
    if not placed:
        return True
    remaining = labels[~mask]
    visible = np.bincount(remaining[remaining >= 0], minlength=len(placed))
    full = np.array([p.full_area for p in placed])
    return bool(np.all(visible >= np.maximum(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * full)))


def render_scene(rng: np.random.Generator) -> tuple[np.ndarray, list[SceneInstance]]:
    """One (H, W, 3) uint8 RGB image and its visible instances (1 to MAX_OBJECTS).

    Objects are painted in order, so later ones occlude earlier ones; a few categories per
    image are repeated so that same-category multi-instance scenes are common.
    """
    h, w = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, 2))
    num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    num_categories = int(rng.integers(1, min(3, num_objects) + 1))
    scene_categories = rng.choice(len(CATEGORIES), num_categories, replace=False)
    image = _background((h, w), rng)
    labels = np.full((h, w), -1, np.int16)
    placed: list[_PlacedObject] = []
    for _ in range(num_objects):
        category = CATEGORIES[int(rng.choice(scene_categories))]
        placement = _place(labels, placed, category, rng)
        if placement is None:
            continue
        mask, radius = placement
        _paint_instance(image, mask, category, rng)
        labels[mask] = len(placed)
        placed.append(_PlacedObject(category.id, radius, int(mask.sum())))
    blurred = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 0.9))
    noise = _unit_noise(blurred.shape, rng) * rng.uniform(3.0, 10.0)
    rgb = np.clip(blurred * 255.0 + noise + 0.5, 0.0, 255.0).astype(np.uint8)
    instances = [SceneInstance(p.category_id, labels == i) for i, p in enumerate(placed)]
    return rgb, instances


def _generate_split(output: Path, split: str, count: int, seed: int) -> tuple[Path, Path]:
    image_dir, json_path = output / split, output / "annotations" / f"{split}.json"
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index in tqdm(range(count), desc=f"synthetic {split}", unit="img"):
        rgb, instances = render_scene(np.random.default_rng([seed, SPLIT_INDEX[split], index]))
        file_name = f"{index:06d}.png"
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for {image_dir / file_name}")
        atomic_write_bytes(image_dir / file_name, png.tobytes())
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": rgb.shape[0], "width": rgb.shape[1]}
        )
        for instance in instances:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": instance.category_id,
                    "iscrowd": 0,
                    "segmentation": mask_to_rle(instance.mask),
                    "bbox": mask_to_box_xywh(instance.mask),
                    "area": int(instance.mask.sum()),
                }
            )
    coco = {
        "info": {"description": "uis_d2 synthetic shapes", "split": split, "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name, "supercategory": "shape"} for c in CATEGORIES],
    }
    atomic_write_json(json_path, coco)
    return image_dir, json_path


def generate_synthetic_dataset(
    output: str | Path, num_train: int = 200, num_val: int = 50, seed: int = 0
) -> dict[str, Path]:
    """Write OUTPUT/{train,val}/*.png and OUTPUT/annotations/{train,val}.json.

    Returns the paths under the keys train_images, train_json, val_images, val_json.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got num_train={num_train}, num_val={num_val}")
    output = Path(output)
    paths: dict[str, Path] = {}
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir, json_path = _generate_split(output, split, count, seed)
        image_dir.mkdir(parents=True, exist_ok=True)
        paths[f"{split}_images"], paths[f"{split}_json"] = image_dir, json_path
    return paths
