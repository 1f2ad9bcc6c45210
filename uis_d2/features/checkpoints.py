"""Loading self-supervised checkpoints from local files in their official layouts.

Accepted layouts (``CHECKPOINT_FORMAT``; "auto" detects them from the file's top-level keys):

- ``mae``: ``{"model": state dict}`` with timm names.
- ``dino``: a bare timm-named state dict (a full training checkpoint's ``"teacher"`` also works).
- ``mocov3``: ``{"state_dict": ...}`` with ``module.base_encoder.`` prefixes; the momentum
  encoder and predictor are discarded, the projection head is reported as unused.
- ``msn``: ``{"target_encoder": ...}`` with ``module.`` prefixes.
- ``selfpatch``: a bare state dict, or one wrapped in ``"teacher"`` (preferred) / ``"student"``,
  names optionally prefixed ``module.`` and/or ``backbone.`` (the DINO code base's layout).
- ``densecl``: ``{"state_dict": ...}`` (or bare) with torchvision ResNet names, optionally under
  ``backbone.`` or ``encoder_q.0.`` (the query encoder; the key encoder and queue are discarded).
- ``dinov2``: the official DINOv2 files (``dinov2_vitb14[_reg4]_pretrain.pth``): a bare state
  dict in Meta's names, renamed to timm's (``_dinov2_to_timm``); timm's own conversion of these
  weights (``model.safetensors``) is ``timm``.
- ``leopart``: a Leopart fine-tuning checkpoint, the student's ViT: ours
  (tools/finetune_leopart.py: ``{"model": ...}`` with ``student.model.`` names) or the reference's
  Lightning file (``{"state_dict": ...}`` with ``model.`` names); the projection head, the
  prototypes and the teacher are discarded. ``leopart_teacher`` reads the EMA teacher instead
  (``teacher.model.`` / ``teacher.``).
- ``timm``: a bare state dict in a ``.pth``/``.bin`` file, or a ``.safetensors`` file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Per layout, the prefixes under which its files keep the encoder, most specific first ("" =
# unprefixed); keys under none of them (momentum encoders, heads, queues) are discarded. One table
# for the ViT/ResNet extractors below and for the ResNet conversion to detectron2 names
# (uis_d2/utils/checkpoint_convert.py, whose "moco" is MoCo v1/v2 and "torchvision" a plain ResNet).
ENCODER_PREFIXES = {
    "mae": ("module.", ""),
    "dino": ("module.backbone.", "backbone.", "module.", ""),
    "mocov3": ("module.base_encoder.", "base_encoder.", "module.", ""),
    "msn": ("module.", ""),
    "selfpatch": ("module.backbone.", "backbone.", "module.", ""),
    "dinov2": ("module.backbone.", "backbone.", "module.", ""),
    "densecl": (
        "module.encoder_q.0.",
        "encoder_q.0.",
        "module.backbone.",
        "backbone.",
        "module.",
        "",
    ),
    "leopart": ("module.student.model.", "student.model.", "model."),
    "leopart_teacher": ("module.teacher.model.", "teacher.model.", "teacher."),
    "timm": ("module.", ""),
    "moco": ("module.encoder_q.", "encoder_q.", ""),
    "torchvision": ("module.", ""),
}
# The layouts an extractor node's CHECKPOINT_FORMAT may name ("auto" detects them).
CHECKPOINT_FORMATS = (
    "auto",
    "mae",
    "dino",
    "mocov3",
    "msn",
    "selfpatch",
    "dinov2",
    "densecl",
    "leopart",
    "leopart_teacher",
    "timm",
)
# A checkpoint must supply at least this fraction of the model's tensors, or it is the wrong file.
_MIN_LOADED_FRACTION = 0.5


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_file(path: Path) -> Mapping:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # official files may pickle argparse args next to the weights
        logger.warning("%s: weights-only load failed (%s); loading the full pickle", path, err)
        return torch.load(path, map_location="cpu", weights_only=False)


def detect_format(path: Path, obj: Mapping) -> str:
    """Guess the layout from the file suffix and its top-level keys."""
    if path.suffix == ".safetensors":
        return "timm"
    if "target_encoder" in obj:
        return "msn"
    if _is_leopart(obj):
        return "leopart"
    if "state_dict" in obj:
        keys = obj["state_dict"].keys()
        if any(k.startswith(("module.base_encoder.", "base_encoder.")) for k in keys):
            return "mocov3"
        return "densecl"
    if "model" in obj:
        return "mae"
    if "teacher" in obj or "student" in obj:
        return "selfpatch"
    if "mask_token" in obj or "register_tokens" in obj:
        return "dinov2"
    return "dino"


def _is_leopart(obj: Mapping) -> bool:
    """A Leopart checkpoint: its state dict holds the student under ``student.model.`` (ours)
    or beside a ``teacher.`` copy (the reference's Lightning module)."""
    for key in ("model", "state_dict"):
        state = obj.get(key)
        if isinstance(state, Mapping):
            names = [str(k) for k in state]
            if any(k.startswith("student.model.") for k in names):
                return True
            if any(k.startswith("teacher.") for k in names) and any(
                k.startswith("model.") for k in names
            ):
                return True
    return False


def _unwrap(obj: Mapping, fmt: str, path: Path) -> Mapping:
    wrappers = {
        "mae": ("model",),
        "dino": ("teacher",),
        "mocov3": ("state_dict",),
        "msn": ("target_encoder",),
        "selfpatch": ("teacher", "student", "state_dict", "model"),
        "dinov2": ("teacher",),
        "densecl": ("state_dict",),
        "leopart": ("model", "state_dict"),
        "leopart_teacher": ("model", "state_dict"),
        "timm": ("state_dict", "model"),
    }[fmt]
    for key in wrappers:
        if key in obj and isinstance(obj[key], Mapping):
            return obj[key]
    if fmt in ("mae", "mocov3", "msn"):
        raise ValueError(
            f"{path}: not a {fmt} checkpoint: expected a top-level {wrappers[0]!r} entry, "
            f"found keys {sorted(obj)[:8]}"
        )
    return obj


def _select_submodel(state: Mapping, fmt: str) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    for prefix in ENCODER_PREFIXES[fmt]:
        if prefix and any(k.startswith(prefix) for k in tensors):
            kept = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if len(kept) < len(tensors):
                logger.info(
                    "kept %d tensors under %r, discarded %d",
                    len(kept),
                    prefix,
                    len(tensors) - len(kept),
                )
            return kept
    return tensors


def _dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta's DINOv2 names -> timm's ``vit_*_dinov2`` ones, which differ only in the prefix tokens.

    The masked-modelling ``mask_token`` is training-only. With registers, timm's model adds
    position embeddings to the patches alone (``no_embed_class``), so the class token's
    embedding, a constant, is folded into ``cls_token``: the sum entering block 0 is unchanged.
    """
    state = {k: v for k, v in state.items() if k != "mask_token"}
    if "register_tokens" in state:
        state["reg_token"] = state.pop("register_tokens")
        pos_embed = state.pop("pos_embed")
        state["cls_token"] = state["cls_token"] + pos_embed[:, :1]
        state["pos_embed"] = pos_embed[:, 1:]
    return state


def read_state_dict(path: str | Path, fmt: str = "auto") -> tuple[dict[str, torch.Tensor], str]:
    """The backbone state dict inside a checkpoint file, and the layout it was read as."""
    path = Path(path)
    if fmt not in CHECKPOINT_FORMATS:
        raise ValueError(
            f"CHECKPOINT_FORMAT = {fmt!r} is invalid: must be one of {list(CHECKPOINT_FORMATS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    obj = _read_file(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: not a state dict (got {type(obj).__name__})")
    if fmt == "auto":
        fmt = detect_format(path, obj)
    state = _select_submodel(_unwrap(obj, fmt, path), fmt)
    return (_dinov2_to_timm(state) if fmt == "dinov2" else state), fmt


def load_checkpoint(
    model: nn.Module,
    path: str | Path,
    fmt: str = "auto",
    adapt: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> str:
    """Load ``path`` into ``model`` and return the file's sha256.

    ``adapt(name, loaded, expected)`` may reshape a tensor whose shape legitimately differs (a
    ViT's position embedding at another resolution). Any other shape mismatch, or a file that
    supplies under half the model's tensors, raises a ValueError naming the file.
    """
    state, fmt = read_state_dict(path, fmt)
    own = model.state_dict()
    for name, tensor in list(state.items()):
        if name in own and tensor.shape != own[name].shape and adapt is not None:
            state[name] = adapt(name, tensor, own[name])
    mismatched = [
        f"{n}: file {tuple(state[n].shape)} vs model {tuple(own[n].shape)}"
        for n in own
        if n in state and state[n].shape != own[n].shape
    ]
    if mismatched:
        raise ValueError(
            f"{path} ({fmt}) does not fit the model: shape mismatch in "
            f"{len(mismatched)} tensors, e.g. {mismatched[:3]}"
        )
    missing = [n for n in own if n not in state]
    unexpected = [n for n in state if n not in own]
    if len(own) - len(missing) < _MIN_LOADED_FRACTION * len(own):
        raise ValueError(
            f"{path} ({fmt}) does not fit the model: only {len(own) - len(missing)} of its "
            f"{len(own)} tensors are in the file (missing e.g. {missing[:3]}; the file holds "
            f"e.g. {list(state)[:3]}); check CHECKPOINT_FORMAT and ARCH"
        )
    if missing:
        logger.warning(
            "%s: %d model tensors missing from the file (left random): %s",
            path,
            len(missing),
            missing,
        )
    if unexpected:
        logger.warning(
            "%s: %d tensors in the file unused by the model (e.g. heads): %s",
            path,
            len(unexpected),
            unexpected,
        )
    model.load_state_dict({n: t for n, t in state.items() if n in own}, strict=False)
    logger.info("loaded %s (%s) into %s", path, fmt, type(model).__name__)
    return file_sha256(path)
