"""Datasets named by what they are instead of by a registration: a folder of images, or the
pseudo-labels generated on one. Every tool that takes a dataset name accepts these specs:

- ``folder:PATH``: every image under PATH, in sub-folders too (``IMAGE_SUFFIXES``, any case;
  other files, and hidden files and folders such as macOS ``._x.jpg`` forks, are ignored), as
  detectron2 dicts without annotations, sorted by path. A relative PATH is taken from the working
  directory (not ``$DETECTRON2_DATASETS``); the metadata's ``image_root`` is the absolute folder,
  so ``tools/generate_proposals.py`` writes file names relative to it and records it in
  ``info["image_root"]``.
- ``pseudo:JSON``: a pseudo-label json (data/pseudo_labels.py), e.g. generate_proposals' output
  for a ``folder:`` spec, with the images under the ``info["image_root"]`` it records (a
  relative one taken from the working directory, as the runner recorded it; the json's own
  folder when it records none), as self-training registers its rounds' files. Put it in
  ``DATASETS.TRAIN`` to train on it; for images that have moved since,
  ``INPUT.PSEUDO_MASKS.REGISTER`` names the image root explicitly.

Image ids of a folder are a hash of each file's path relative to PATH (blake2b, reduced to
1..2**63 - 1), not its position in the listing: adding, removing or renaming files leaves every
other image's id unchanged, and so does moving or mounting the whole folder elsewhere, so an
interrupted generate_proposals run resumes on a folder that has grown in between, and machines
that see it under different paths agree. The price: ids carry no order (``--limit N`` takes a
deterministic pseudo-random sample of N images), and two paths could share an id (odds about
n**2 / 2**64 for n images), which generate_proposals refuses as a repeated id.

Heights and widths come from the file headers (``image_size``, no pixel decode) when the folder
is loaded. A file with an image suffix whose header cannot be read follows
``INPUT.BAD_IMAGE_POLICY``: "fail" stops the loading naming the file, before any work is done;
"skip" keeps it without a size, so the stage that decodes it names it as it names any unreadable
image (the proposal runner in ``info["skipped"]`` and its summary, inference with no
predictions).

Registration (``ensure_dataset``) reads nothing from a folder: it is listed when the dataset is
loaded, so each tool calls ``ensure_dataset`` once per process before it looks the name up.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog
from detectron2.data.catalog import Metadata

from uis_d2.data.datasets import CLASS_AGNOSTIC_META, register_pseudo_labels, replace_registration
from uis_d2.data.image_io import BadImageError, image_size
from uis_d2.data.pseudo_labels import read_info

logger = logging.getLogger(__name__)

FOLDER_PREFIX = "folder:"
PSEUDO_PREFIX = "pseudo:"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
_MAX_ID = 2**63 - 1  # ids are positive and fit an int64 (numpy, torch, the validators)


def is_dataset_spec(name: str) -> bool:
    """Whether ``name`` is a ``folder:`` or ``pseudo:`` spec rather than a registered name."""
    return name.startswith((FOLDER_PREFIX, PSEUDO_PREFIX))


def spec_path(spec: str) -> Path:
    """The absolute path a spec names (``~`` expanded, relative to the working directory)."""
    prefix = next(p for p in (FOLDER_PREFIX, PSEUDO_PREFIX) if spec.startswith(p))
    path = spec[len(prefix) :]
    if not path:
        raise ValueError(f"dataset spec {spec!r} names no path")
    return Path(os.path.abspath(os.path.expanduser(path)))


def list_images(root: str | Path) -> list[Path]:
    """The image files under ``root`` (``IMAGE_SUFFIXES``, any case), in sub-folders too, sorted
    by their path relative to it. Hidden files and folders are skipped, and so are symlinked
    sub-folders (no cycles). A missing folder, or one without any image file, is a
    FileNotFoundError naming it.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise FileNotFoundError(f"image folder {root} {what}")
    found: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root, onerror=_warn_unlisted):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                path = Path(folder, name)
                found[path.relative_to(root).as_posix()] = path
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise FileNotFoundError(f"no image files ({suffixes}) under {root}")
    return [found[relative] for relative in sorted(found)]


def _warn_unlisted(err: OSError) -> None:
    logger.warning("cannot list %s (%s): its images are left out", err.filename, err.strerror)


def folder_image_id(relative_path: str) -> int:
    """The stable id of the image at ``relative_path`` (posix, relative to its folder)."""
    digest = hashlib.blake2b(os.fsencode(relative_path), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _MAX_ID + 1


def load_image_folder(root: str | Path, bad_image_policy: str = "skip") -> list[dict[str, Any]]:
    """detectron2 dicts (file_name, image_id, height, width) of the images under ``root``."""
    root = Path(root)
    dicts = []
    for path in list_images(root):
        record: dict[str, Any] = {
            "file_name": str(path),
            "image_id": folder_image_id(path.relative_to(root).as_posix()),
        }
        try:
            record["height"], record["width"] = image_size(path)
        except BadImageError as err:
            if bad_image_policy == "fail":
                raise BadImageError(
                    path, f"{err.reason} (INPUT.BAD_IMAGE_POLICY is 'fail')"
                ) from err
        dicts.append(record)
    return dicts


def register_folder(spec: str, bad_image_policy: str = "skip") -> None:
    """Register ``folder:PATH`` as a class-agnostic dataset (idempotent; nothing is read)."""
    root = spec_path(spec)
    metadata = Metadata(name=spec, image_root=str(root), **CLASS_AGNOSTIC_META)
    replace_registration(spec, lambda: load_image_folder(root, bad_image_policy), metadata)


def register_pseudo_spec(spec: str, class_aware: bool = False) -> None:
    """Register ``pseudo:JSON`` with the image root its ``info`` records (reads only that, and
    the categories when ``class_aware``: see ``register_pseudo_labels``)."""
    json_file = spec_path(spec)
    image_root = read_info(json_file).get("image_root") or json_file.parent
    register_pseudo_labels(spec, str(json_file), os.path.abspath(image_root), class_aware)


def ensure_dataset(name: str, bad_image_policy: str = "skip", class_aware: bool = False) -> str:
    """Make ``name`` loadable from detectron2's catalogs and return it.

    A spec is (re-)registered, with ``bad_image_policy`` (INPUT.BAD_IMAGE_POLICY) for a folder's
    unreadable files and ``class_aware`` for a pseudo-label json's categories; a registered name
    is left as it is; anything else is a KeyError naming it.
    """
    if name.startswith(FOLDER_PREFIX):
        register_folder(name, bad_image_policy)
    elif name.startswith(PSEUDO_PREFIX):
        register_pseudo_spec(name, class_aware)
    elif name not in DatasetCatalog.list():
        raise KeyError(
            f"dataset {name!r} is not registered; name a registered dataset "
            f"(uis_d2/data/datasets.py), an image folder as {FOLDER_PREFIX}PATH or a pseudo-label "
            f"json as {PSEUDO_PREFIX}JSON"
        )
    return name
