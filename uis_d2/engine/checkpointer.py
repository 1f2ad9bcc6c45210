"""detectron2's checkpointer, made safe against the two ways checkpoints go wrong in practice.

1. A run killed while writing leaves a truncated newest checkpoint. ``--resume`` would fail on
   it (or, worse, the ``last_checkpoint`` pointer itself could be torn). Resuming here tries the
   checkpoint named by ``last_checkpoint``, then the older ones, newest first; it warns about
   every file it skips and repoints ``last_checkpoint`` at the one it resumed from. The pointer
   is written atomically. Each attempt runs on a fresh checkpointer over the same model and
   checkpointables: detectron2 main's ``load`` refuses to run again on an instance whose
   previous ``load`` raised (it keeps per-load state), and v0.6 has no such state, so only a
   fresh instance behaves the same on both.
2. A weights file of another architecture (a ViT state dict given to SOLOv2) shares no tensor
   name or shape with the model; detectron2 only logs the unmatched keys and trains from random
   weights. Here that is an error naming the file.
"""

from __future__ import annotations

import os
import re
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from uis_d2.utils.files import atomic_write_bytes

LAST_CHECKPOINT_FILE = "last_checkpoint"
_PERIODIC_NAME = re.compile(r"model_(\d+)\.pth")


class CheckpointLoadError(RuntimeError):
    """A checkpoint file that cannot be read or does not fit the model; names the file."""


class _DoesNotFit(ValueError):
    """Raised where the file name is not known; ``load`` adds it."""


def checkpoints_newest_first(save_dir: str) -> list[str]:
    """Checkpoint files of ``save_dir``: model_final.pth, then model_<iter>.pth by iteration."""
    if not os.path.isdir(save_dir):
        return []
    names = os.listdir(save_dir)
    periodic = sorted(
        (int(m.group(1)), name) for name in names if (m := _PERIODIC_NAME.fullmatch(name))
    )
    ordered = [name for _, name in reversed(periodic)]
    if "model_final.pth" in names:
        ordered.insert(0, "model_final.pth")
    return [os.path.join(save_dir, name) for name in ordered]


class ResilientCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with fallback on unreadable checkpoints (see module doc)."""

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        if resume and self.has_checkpoint():
            return self._resume_from_newest_readable()
        return super().resume_or_load(path, resume=False)

    def _resume_from_newest_readable(self) -> dict[str, Any]:
        pointed = self.get_checkpoint_file()
        candidates = [pointed] if os.path.isfile(pointed) else []
        candidates += [c for c in checkpoints_newest_first(self.save_dir) if c != pointed]
        if not candidates:
            raise CheckpointLoadError(
                f"{os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)} names {pointed!r}, which "
                "does not exist, and the folder holds no other checkpoint to resume from"
            )
        failures = []
        for candidate in candidates:
            attempt = type(self)(
                self.model, self.save_dir, save_to_disk=self.save_to_disk, **self.checkpointables
            )
            try:
                # Reading or fitting fails before any weight or trainer state is replaced.
                result = attempt.load(candidate)
            except CheckpointLoadError as err:
                failures.append(str(err))
                self.logger.warning(f"Cannot resume from {candidate}: {err}; trying an older one")
                continue
            if candidate != pointed:
                self.logger.warning(
                    f"Resumed from {candidate} instead of the unreadable {pointed or '(none)'}"
                )
                self.tag_last_checkpoint(os.path.basename(candidate))
            return result
        raise CheckpointLoadError(
            "no checkpoint to resume from is readable:\n" + "\n".join(failures)
        )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomic, so a kill while tagging never leaves an empty pointer."""
        if self.save_to_disk:
            path = os.path.join(self.save_dir, LAST_CHECKPOINT_FILE)
            atomic_write_bytes(path, last_filename_basename.encode("utf-8"))

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return super().load(path, *args, **kwargs)
        except _DoesNotFit as err:
            raise CheckpointLoadError(f"{path}: {err}") from None

    def _load_file(self, filename: str) -> dict[str, Any]:
        try:
            return super()._load_file(filename)
        except Exception as err:  # torch/pickle raise many types for torn or foreign files
            raise CheckpointLoadError(
                f"{filename}: unreadable checkpoint (truncated or not a checkpoint): "
                f"{type(err).__name__}: {err}"
            ) from err

    def _load_model(self, checkpoint: dict[str, Any]) -> Any:
        file_keys = list(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        model_keys = list(self.model.state_dict())
        # Counted over the model's parameters: files with matching heuristics (converted .pkl)
        # are renamed during loading, and FrozenBatchNorm fills in absent running statistics.
        loaded = {name for name, _ in self.model.named_parameters()}
        loaded -= set(incompatible.missing_keys)
        if file_keys and not loaded:
            shapes = [f"{k}: file {a} vs model {b}" for k, a, b in incompatible.incorrect_shapes]
            raise _DoesNotFit(
                f"checkpoint does not fit {type(self.model).__name__}: none of its "
                f"{len(model_keys)} tensors is in the file with the right shape (model holds "
                f"e.g. {model_keys[:3]}, the file {file_keys[:3]}"
                + (f"; wrong shapes e.g. {shapes[:3]}" if shapes else "")
                + "): is it a checkpoint of another architecture? DenseCL/MoCo ResNets need "
                "tools/convert_checkpoint.py"
            )
        return incompatible
