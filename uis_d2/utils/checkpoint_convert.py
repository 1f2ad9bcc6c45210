"""Convert self-supervised torchvision-ResNet checkpoints (DenseCL, MoCo) to detectron2 names.

detectron2's ResNet names its layers differently from torchvision (``res2.0.conv1.norm`` vs
``layer1.0.bn1``), and self-supervised training code wraps the network in prefixes
(``module.encoder_q.``) next to heads, momentum encoders and queues that must not be loaded.
The output is a detectron2 "model zoo" file whose names ``DetectionCheckpointer`` matches by
suffix (``matching_heuristics``), so it loads into any ResNet(-FPN) backbone.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from uis_d2.features.checkpoints import ENCODER_PREFIXES
from uis_d2.utils.files import atomic_write_bytes

# The layouts ``convert_state_dict`` reads ("auto" detects them); each one's encoder prefixes
# (query/online encoder, most specific first) are in ``ENCODER_PREFIXES``.
CONVERT_FORMATS = ("auto", "densecl", "moco", "torchvision")
_STEM = "conv1.weight"

_STAGE_KEY = re.compile(r"^layer(\d)\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    r"conv(\d)\.weight": r"conv\1.weight",
    r"bn(\d)\.(weight|bias|running_mean|running_var)": r"conv\1.norm.\2",
    r"downsample\.0\.weight": "shortcut.weight",
    r"downsample\.1\.(weight|bias|running_mean|running_var)": r"shortcut.norm.\1",
}
_STEM_PARTS = {
    r"conv1\.weight": "stem.conv1.weight",
    r"bn1\.(weight|bias|running_mean|running_var)": r"stem.conv1.norm.\1",
}
# Parts of a torchvision ResNet that a detection backbone does not have.
_DROPPED = re.compile(r"(^fc\.|num_batches_tracked$)")


@dataclass
class ConversionReport:
    """What happened to every key of the input state dict."""

    fmt: str
    prefix: str
    converted: dict[str, str] = field(default_factory=dict)  # input name -> detectron2 name
    dropped: list[str] = field(default_factory=list)  # heads, other encoders, BN counters
    unexpected: list[str] = field(default_factory=list)  # encoder keys that are not ResNet

    def summary(self) -> str:
        lines = [
            f"format {self.fmt}, encoder prefix {self.prefix!r}: {len(self.converted)} converted, "
            f"{len(self.dropped)} dropped, {len(self.unexpected)} unexpected"
        ]
        if self.dropped:
            lines.append("dropped: " + ", ".join(_abbreviate(self.dropped)))
        if self.unexpected:
            lines.append("UNEXPECTED (not loaded): " + ", ".join(_abbreviate(self.unexpected)))
        return "\n".join(lines)


def _abbreviate(names: list[str], limit: int = 12) -> list[str]:
    return names[:limit] + ([f"... ({len(names) - limit} more)"] if len(names) > limit else [])


def detectron2_name(torchvision_name: str) -> str | None:
    """detectron2 ResNet name of a torchvision ResNet parameter; None when it has none."""
    stage = _STAGE_KEY.match(torchvision_name)
    if stage:
        layer, block, rest = stage.groups()
        parts, prefix = _BLOCK_PARTS, f"res{int(layer) + 1}.{block}."
    else:
        parts, prefix, rest = _STEM_PARTS, "", torchvision_name
    for pattern, replacement in parts.items():
        if re.fullmatch(pattern, rest):
            return prefix + re.sub(pattern, replacement, rest)
    return None


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Mapping:
    """Load a checkpoint file; arbitrary pickles only with ``trust_pickle`` (they can run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: holds objects besides tensors ({err.args[0].splitlines()[0]}); rerun with "
            "--trust-pickle if you trust the file"
        ) from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _state_dict(checkpoint: Mapping) -> Mapping:
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    return checkpoint


def detect_format(state: Mapping) -> str:
    """ "moco" when keys carry MoCo's query-encoder prefix, "densecl" for other wrappers,
    "torchvision" for a plain ResNet state dict."""
    if any(prefix and prefix + _STEM in state for prefix in ENCODER_PREFIXES["moco"]):
        return "moco"
    if _STEM in state or f"module.{_STEM}" in state:
        return "torchvision"
    return "densecl"


def _encoder_prefix(state: Mapping, fmt: str) -> str:
    """The prefix under which the ResNet stem lies (the whole dict when unprefixed)."""
    for prefix in ENCODER_PREFIXES[fmt]:
        if prefix + _STEM in state:
            return prefix
    stems = [k for k in state if k.endswith(_STEM)]
    raise ValueError(
        f"no ResNet stem ('{_STEM}') found for format {fmt!r} under the prefixes "
        f"{[p for p in ENCODER_PREFIXES[fmt] if p]}; keys ending in it: {stems[:5]}, first keys: "
        f"{list(state)[:5]}"
    )


def convert_state_dict(
    checkpoint: Mapping, fmt: str = "auto"
) -> tuple[dict[str, np.ndarray], ConversionReport]:
    """detectron2-named numpy weights of the checkpoint's ResNet encoder, and a key report."""
    if fmt not in CONVERT_FORMATS:
        raise ValueError(f"format {fmt!r}: must be one of {list(CONVERT_FORMATS)}")
    state = _state_dict(checkpoint)
    fmt = detect_format(state) if fmt == "auto" else fmt
    prefix = _encoder_prefix(state, fmt)
    report = ConversionReport(fmt, prefix)
    weights: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not name.startswith(prefix) or not isinstance(value, torch.Tensor):
            report.dropped.append(name)
            continue
        local = name[len(prefix) :]
        new_name = detectron2_name(local)
        if new_name is not None:
            weights[new_name] = value.detach().cpu().numpy()
            report.converted[name] = new_name
        elif _DROPPED.search(local):
            report.dropped.append(name)
        else:
            report.unexpected.append(name)
    return weights, report


def save_detectron2_checkpoint(weights: dict[str, np.ndarray], output: str | Path) -> None:
    """Write a file ``DetectionCheckpointer`` loads with name matching: a pickle of numpy arrays
    for ``.pkl``, a torch file of tensors for ``.pth``."""
    output = Path(output)
    if output.suffix == ".pkl":
        payload = {"model": weights, "__author__": "uis_d2", "matching_heuristics": True}
        atomic_write_bytes(output, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    elif output.suffix == ".pth":
        tensors = {k: torch.from_numpy(v) for k, v in weights.items()}
        payload = {"model": tensors, "__author__": "uis_d2", "matching_heuristics": True}
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        torch.save(payload, tmp)
        tmp.replace(output)
    else:
        raise ValueError(f"{output}: output must end in .pkl or .pth")
