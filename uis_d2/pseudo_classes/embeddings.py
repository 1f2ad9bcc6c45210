"""One embedding per mask of a pseudo-label file, for clustering the masks into pseudo-classes.

``EMBEDDINGS``:

- ``stored``: the mask's own embedding in the file (``emb_row`` in ``OUT.emb.npy`` or inline
  ``emb``; for the spectral generator the mean feature inside the mask). No image is read.
- ``box_crop`` (MaskDistill's reference and COMUS): the image cut to the mask's box (background
  inside the box kept), optionally resized to ``crop_size`` x ``crop_size`` (COMUS: 256;
  0 = the crop's own size, MaskDistill's reference), embedded by the extractor's class token.
- ``masked_image`` (MaskDistill's paper): the whole image with the pixels outside the mask set to
  the ImageNet mean, i.e. zero once normalised, then resized and embedded as a crop.

The class token is the extractor's ``cls_token`` (the final-norm class token of a ViT). The
weight-free ``PatchStats`` has none; its SURROGATE stands in: the mean of the crop's patch
features weighted by their colour distinctness (uis_d2/features/patch_stats.py). Inputs go
through the extractor's normalisation at their own size, each side rounded to a multiple of the
patch (the reference zero-pads instead); ``PROPOSALS.SHORT_SIDE`` / ``MAX_SIDE`` do not apply.
A mask whose image has one mask is the image's embedding (MaskDistill, COMUS: one object per
image). Image embeddings are cached in ``OUT.region_emb.npz`` (``EmbeddingCache``).
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from uis_d2.data.image_io import read_image
from uis_d2.data.pseudo_labels import EmbeddingLookup
from uis_d2.features.base import FeatureExtractor, extract_features_and_tokens
from uis_d2.utils.files import atomic_output
from uis_d2.utils.masks import rle_to_mask, to_compressed_rle

EMBEDDINGS = ("stored", "box_crop", "masked_image")
IMAGE_EMBEDDINGS = ("box_crop", "masked_image")
CLASS_TOKEN = "cls_token"
# Pixels outside the mask in ``masked_image``: the ImageNet mean, which normalises to zero.
MASKED_FILL = tuple(255.0 * m for m in IMAGENET_DEFAULT_MEAN)
CACHE_SUFFIX = ".region_emb.npz"


def stored_embeddings(json_file: str | Path, annotations: Sequence[Mapping[str, Any]]):
    """(N, D) float32 embeddings the file stores for its annotations; an error naming the file
    when they carry none (or only some do)."""
    try:
        embeddings = EmbeddingLookup.for_file(json_file).embeddings(annotations)
    except ValueError as err:
        raise ValueError(f"{json_file}: {err}") from err
    if embeddings is None:
        raise ValueError(
            f"{json_file}: its masks carry no stored embedding ('emb_row' or 'emb'); use an "
            "image embedding (box_crop or masked_image)"
        )
    return embeddings


def box_bounds(bbox: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel rows and columns ``(y0, y1, x0, x1)`` covering a COCO box, inside the image and at
    least one pixel wide."""
    x, y, w, h = (float(v) for v in bbox)
    x0 = min(max(int(np.floor(x)), 0), width - 1)
    y0 = min(max(int(np.floor(y)), 0), height - 1)
    x1 = min(max(int(np.ceil(x + w)), x0 + 1), width)
    y1 = min(max(int(np.ceil(y + h)), y0 + 1), height)
    return y0, y1, x0, x1


def region_inputs(
    image: np.ndarray, annotations: Sequence[Mapping[str, Any]], kind: str, crop_size: int
) -> list[torch.Tensor]:
    """(3, h, w) float RGB inputs in 0..255, one per annotation, from an (H, W, 3) uint8 image
    (see the module docstring)."""
    if kind not in IMAGE_EMBEDDINGS:
        raise ValueError(f"image embedding {kind!r}: must be one of {IMAGE_EMBEDDINGS}")
    height, width = image.shape[:2]
    pixels = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    fill = torch.tensor(MASKED_FILL).view(3, 1, 1)
    inputs = []
    for annotation in annotations:
        if kind == "box_crop":
            y0, y1, x0, x1 = box_bounds(annotation["bbox"], height, width)
            region = pixels[:, y0:y1, x0:x1]
        else:
            rle = to_compressed_rle(annotation["segmentation"], height, width)
            region = torch.where(torch.from_numpy(rle_to_mask(rle)), pixels, fill)
        if crop_size > 0:
            region = F.interpolate(
                region[None], (crop_size, crop_size), mode="bilinear", antialias=True
            )[0]
        inputs.append(region)
    return inputs


class _RegionImages(Dataset):
    """Per image: its index and its regions' inputs, decoded and cut in loader workers."""

    def __init__(self, paths: list[str], annotations: list[list[dict]], kind: str, size: int):
        self.paths, self.annotations, self.kind, self.size = paths, annotations, kind, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, list[torch.Tensor]]:
        image = read_image(self.paths[index], fmt="RGB")
        return index, region_inputs(image, self.annotations[index], self.kind, self.size)


@torch.no_grad()
def image_embeddings(
    extractor: FeatureExtractor,
    paths: list[str],
    annotations: list[list[dict]],
    kind: str,
    crop_size: int,
    batch_size: int,
    num_workers: int = 0,
) -> np.ndarray:
    """(sum of masks, C) class tokens of every image's regions, in image then annotation
    order; regions of several images share forward passes of up to ``batch_size``. An
    unreadable image is an error naming it (its masks could not be clustered)."""
    extractor.request_tokens({CLASS_TOKEN})
    fork = num_workers > 0 and "fork" in multiprocessing.get_all_start_methods()
    loader = DataLoader(
        _RegionImages(paths, annotations, kind, crop_size),
        batch_size=None,
        num_workers=num_workers,
        multiprocessing_context="fork" if fork else None,
    )
    offsets = np.cumsum([0] + [len(a) for a in annotations])
    rows: list[np.ndarray | None] = [None] * int(offsets[-1])
    pending: list[tuple[int, torch.Tensor]] = []

    def embed(regions: list[tuple[int, torch.Tensor]]) -> None:
        tokens = extract_features_and_tokens(extractor, [x for _, x in regions])[1]
        for (row, _), token in zip(regions, tokens, strict=True):
            rows[row] = token[CLASS_TOKEN].float().cpu().numpy()

    for index, inputs in tqdm(loader, total=len(paths), unit="image", desc="region embeddings"):
        pending.extend(enumerate(inputs, start=int(offsets[index])))
        while len(pending) >= batch_size:
            embed(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        embed(pending)
    return np.stack(rows).astype(np.float32)


def cache_path(output_json: str | Path) -> Path:
    """``OUT.json`` -> ``OUT.region_emb.npz``. Not ``OUT.emb.npy``: that name is the output
    file's embedding store (data/pseudo_labels.py)."""
    path = Path(output_json)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(stem + CACHE_SUFFIX)


class EmbeddingCache:
    """Image embeddings of a run, valid while ``key`` (input file hash, embedding settings,
    extractor provenance) and the annotation ids are unchanged: a rerun that only changes the
    clustering reads them instead of embedding every mask again."""

    def __init__(self, path: str | Path, key: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.key = json.dumps(key, sort_keys=True, default=str)

    def load(self, annotation_ids: np.ndarray) -> np.ndarray | None:
        if not self.path.is_file():
            return None
        with np.load(self.path) as cached:
            if str(cached["key"]) != self.key or not np.array_equal(
                cached["annotation_ids"], annotation_ids
            ):
                return None
            return cached["embeddings"]

    def save(self, annotation_ids: np.ndarray, embeddings: np.ndarray) -> None:
        with atomic_output(self.path) as out:
            np.savez(out, key=self.key, annotation_ids=annotation_ids, embeddings=embeddings)


def iter_image_groups(
    images: Sequence[Mapping[str, Any]], annotations: Sequence[Mapping[str, Any]]
) -> Iterator[tuple[Mapping[str, Any], list[int]]]:
    """Each image with masks and the positions of its annotations (file order), images in file
    order; an annotation naming no image is an error."""
    positions: dict[Any, list[int]] = {}
    for i, annotation in enumerate(annotations):
        positions.setdefault(annotation.get("image_id"), []).append(i)
    known = {image.get("id") for image in images}
    unknown = [key for key in positions if key not in known]
    if unknown:
        raise ValueError(f"annotations name image ids that are not in 'images': {unknown[:5]}")
    for image in images:
        if image.get("id") in positions:
            yield image, positions[image["id"]]
