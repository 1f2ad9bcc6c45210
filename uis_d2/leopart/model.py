"""Leopart's student-teacher model (SEED_SYSTEMS.md 3.1-3.6): one forward = one training loss.

The student (a ``TimmViTKeys`` ViT, every block trained, so its weights load back into the
proposal extractors unchanged), a projection head and prototypes; their EMA teacher gives
Sinkhorn targets on the global crops and the class-token attention foreground that selects
the bins of the loss. The student predicts, on every other crop, the teacher's assignment of
the region the two crops share.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from uis_d2.features.vit import TimmViTKeys, parse_model_kwargs
from uis_d2.foreground.attention import AttentionMassParams, attention_mass_foreground
from uis_d2.leopart.alignment import align_to_boxes, loss_bins, masked_cross_entropy
from uis_d2.leopart.crops import pair_boxes
from uis_d2.leopart.sinkhorn import EmbeddingQueue, sinkhorn


class ProjectionHead(nn.Module):
    """3-layer MLP with GELU on every patch token; L2-normalised output (ref)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(tokens), dim=-1)


@dataclass(frozen=True)
class LossParams:
    """``LEOPART.SINKHORN``, ``QUEUE.PUSH_PER_IMAGE`` and ``LOSS``, one field per key."""

    epsilon: float
    iterations: int
    push_per_image: int
    temperature: float
    roi_size: int
    tokens: str


class LeopartModel(nn.Module):
    """``forward(batch)`` -> ``{"loss_leopart": ...}`` for a list of ``MultiCropMapper`` dicts."""

    @configurable
    def __init__(
        self,
        *,
        student: TimmViTKeys,
        head: ProjectionHead,
        num_prototypes: int,
        crop_sizes: list[int],
        num_global: int,
        queue_size: int,
        loss: LossParams,
        foreground: AttentionMassParams,
    ) -> None:
        super().__init__()
        if student.model.cls_token is None:
            raise ValueError(
                f"LEOPART.BACKBONE.ARCH = {student.arch!r} has no class token: Leopart's "
                "foreground comes from the class token's attention"
            )
        if not 1 <= num_global < len(crop_sizes):
            raise ValueError(
                f"LEOPART.CROPS: {num_global} global of {len(crop_sizes)} crops; at least one "
                "global and one other crop are needed"
            )
        out_dim = head.mlp[-1].out_features
        self.student = student
        self.head = head
        self.prototypes = nn.Linear(out_dim, num_prototypes, bias=False)
        self.teacher = copy.deepcopy(student).requires_grad_(False)
        self.teacher_head = copy.deepcopy(head).requires_grad_(False)
        self.teacher_prototypes = copy.deepcopy(self.prototypes).requires_grad_(False)
        self.teacher.request_tokens({"patch_tokens", "cls_attention"})
        self.student.request_tokens({"patch_tokens"})
        self.queue = EmbeddingQueue(queue_size, out_dim)
        self.crop_sizes = list(crop_sizes)
        self.num_global = num_global
        self.loss_params = loss
        self.foreground = foreground

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        lp = cfg.LEOPART
        kwargs = parse_model_kwargs(lp.BACKBONE.MODEL_KWARGS)
        kwargs["drop_path_rate"] = float(lp.DROP_PATH)
        student = TimmViTKeys(lp.BACKBONE, short_side=0, max_side=0, model_kwargs=kwargs)
        crops = lp.CROPS
        return {
            "student": student,
            "head": ProjectionHead(
                int(student.model.embed_dim), int(lp.HEAD.HIDDEN_DIM), int(lp.HEAD.OUT_DIM)
            ),
            "num_prototypes": int(lp.HEAD.NUM_PROTOTYPES),
            "crop_sizes": [int(crops.GLOBAL_SIZE)] * int(crops.NUM_GLOBAL)
            + [int(crops.LOCAL_SIZE)] * int(crops.NUM_LOCAL),
            "num_global": int(crops.NUM_GLOBAL),
            # The reference splits its queue over the processes (8,192 / #GPUs each).
            "queue_size": int(lp.QUEUE.SIZE) // comm.get_world_size(),
            "loss": LossParams(
                epsilon=float(lp.SINKHORN.EPSILON),
                iterations=int(lp.SINKHORN.ITERATIONS),
                push_per_image=int(lp.QUEUE.PUSH_PER_IMAGE),
                temperature=float(lp.LOSS.TEMPERATURE),
                roi_size=int(lp.LOSS.ROI_SIZE),
                tokens=str(lp.LOSS.TOKENS),
            ),
            "foreground": AttentionMassParams(
                heads=tuple(int(h) for h in lp.FOREGROUND.HEADS),
                mass=float(lp.FOREGROUND.MASS),
                blur_size=int(lp.FOREGROUND.BLUR_SIZE),
                blur_sigma=float(lp.FOREGROUND.BLUR_SIGMA),
                max_dropped_component=int(lp.FOREGROUND.MAX_DROPPED_COMPONENT),
            ),
        }

    def train(self, mode: bool = True) -> LeopartModel:
        """The teacher always runs in eval mode (no stochastic depth)."""
        super().train(mode)
        self.teacher.eval()
        self.teacher_head.eval()
        return self

    def _teacher_pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        return [
            (s, t)
            for student, teacher in (
                (self.student, self.teacher),
                (self.head, self.teacher_head),
                (self.prototypes, self.teacher_prototypes),
            )
            for s, t in zip(student.parameters(), teacher.parameters(), strict=True)
        ]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
        for student, teacher in self._teacher_pairs():
            teacher.mul_(momentum).add_(student.detach(), alpha=1.0 - momentum)

    @torch.no_grad()
    def _normalize_prototypes(self) -> None:
        """Rows back on the unit sphere before every step, so scores are cosines (ref)."""
        for layer in (self.prototypes, self.teacher_prototypes):
            layer.weight.copy_(F.normalize(layer.weight, dim=1))

    def _normalized(self, crops: list[torch.Tensor]) -> torch.Tensor:
        return self.student.normalise(torch.cat(crops).to(self.student.device).float() / 255.0)

    def _scores(self, tokens: torch.Tensor, head: nn.Module, prototypes: nn.Linear):
        """Patch tokens (N, D, h, w) -> embeddings (N, h, w, d) and scores (N, K, h, w)."""
        embeddings = head(tokens.permute(0, 2, 3, 1))
        return embeddings, prototypes(embeddings).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _teacher_targets(self, crops: list[torch.Tensor], batch: int):
        """Per global crop: Sinkhorn assignments (B, K, h, w) and foreground (B, h, w)."""
        _, tokens = self.teacher.extract_with_tokens(
            self._normalized(crops), self.teacher.requested_tokens
        )
        embeddings, scores = self._scores(
            tokens["patch_tokens"].float(), self.teacher_head, self.teacher_prototypes
        )
        num_prototypes, grid = scores.shape[1], scores.shape[-2:]
        flat = scores.permute(0, 2, 3, 1).reshape(-1, num_prototypes).float()
        p = self.loss_params
        if self.queue.is_full:
            queued = self.queue.embeddings @ self.prototypes.weight.t()
            q = sinkhorn(torch.cat([queued, flat]), p.epsilon, p.iterations)[len(queued) :]
        else:
            q = sinkhorn(flat, p.epsilon, p.iterations)
        q = q.reshape(len(scores), *grid, num_prototypes).permute(0, 3, 1, 2)
        foreground = torch.stack(
            [attention_mass_foreground(a, self.foreground) for a in tokens["cls_attention"]]
        )
        self._push_queue(embeddings.reshape(-1, embeddings.shape[-1]), foreground.flatten(), batch)
        return q.split(batch), foreground.split(batch)

    def _push_queue(self, embeddings: torch.Tensor, foreground: torch.Tensor, batch: int) -> None:
        """Up to ``push_per_image`` x B random foreground teacher embeddings (ref)."""
        candidates = foreground.nonzero()[:, 0]
        count = min(len(candidates), self.loss_params.push_per_image * batch)
        chosen = candidates[torch.randperm(len(candidates), device=candidates.device)[:count]]
        self.queue.push(embeddings[chosen].float())

    def _student_scores(self, crops_by_index: list[torch.Tensor]) -> list[torch.Tensor]:
        """(B, K, h, w) scores of every crop; crops of one size share a forward."""
        scores: list[torch.Tensor | None] = [None] * len(crops_by_index)
        for size in dict.fromkeys(self.crop_sizes):
            indices = [i for i, s in enumerate(self.crop_sizes) if s == size]
            _, tokens = self.student.extract_with_tokens(
                self._normalized([crops_by_index[i] for i in indices]),
                self.student.requested_tokens,
            )
            _, group = self._scores(tokens["patch_tokens"], self.head, self.prototypes)
            for i, part in zip(indices, group.split(len(crops_by_index[0])), strict=True):
                scores[i] = part
        return scores  # type: ignore[return-value]

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not self.training:
            raise RuntimeError("LeopartModel only trains; extract features with TimmViTKeys")
        num_crops = len(self.crop_sizes)
        for item in batched_inputs:
            if len(item["crops"]) != num_crops:
                raise ValueError(
                    f"{item['file_name']}: {len(item['crops'])} crops, LEOPART.CROPS gives "
                    f"{num_crops}"
                )
        self._normalize_prototypes()
        batch = len(batched_inputs)
        crops_by_index = [
            torch.stack([item["crops"][c] for item in batched_inputs]) for c in range(num_crops)
        ]
        boxes = torch.stack([item["boxes"] for item in batched_inputs]).to(self.student.device)
        targets, foreground = self._teacher_targets(crops_by_index[: self.num_global], batch)
        scores = self._student_scores(crops_by_index)
        loss = self._alignment_loss(scores, targets, foreground, boxes)
        storage = get_event_storage()
        storage.put_scalar("leopart/foreground_share", float(torch.cat(foreground).float().mean()))
        storage.put_scalar("leopart/queue_in_use", float(self.queue.is_full))
        return {"loss_leopart": loss}

    def _alignment_loss(
        self,
        scores: list[torch.Tensor],
        targets: tuple[torch.Tensor, ...],
        foreground: tuple[torch.Tensor, ...],
        boxes: torch.Tensor,
    ) -> torch.Tensor:
        """Mean over global crops j of (sum over the other crops v of l_{j,v}) / (V - 1)."""
        p, stride, sizes = self.loss_params, self.student.stride, self.crop_sizes
        per_global = []
        for j in range(self.num_global):
            terms = []
            for v in range(len(sizes)):
                if v == j:
                    continue
                box_j, box_v, valid = pair_boxes(boxes, j, v, sizes)
                bins = loss_bins(foreground[j], box_j, stride, p.roi_size, p.tokens)
                term = masked_cross_entropy(
                    align_to_boxes(scores[v], box_v, stride, p.roi_size),
                    align_to_boxes(targets[j], box_j, stride, p.roi_size),
                    bins & valid[:, None, None],
                    p.temperature,
                )
                if term is not None:
                    terms.append(term)
            if terms:
                per_global.append(torch.stack(terms).sum() / (len(sizes) - 1))
        if not per_global:  # no foreground bin anywhere: a zero that keeps the graph (DDP)
            return sum(s.sum() for s in scores) * 0.0
        return torch.stack(per_global).mean()
