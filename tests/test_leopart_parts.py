"""Leopart's pieces on constructed inputs: Sinkhorn, the queue, crop geometry, alignment, the
masked loss, the crop mapper, and the config/checkpoint plumbing."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import uis_d2  # noqa: F401
from uis_d2.config import get_cfg
from uis_d2.features.checkpoints import read_state_dict
from uis_d2.features.vit import parse_model_kwargs
from uis_d2.leopart.alignment import align_to_boxes, loss_bins, masked_cross_entropy
from uis_d2.leopart.crops import (
    CropParams,
    MultiCropMapper,
    box_in_frame,
    box_overlap,
    pair_boxes,
    sample_crop_boxes,
)
from uis_d2.leopart.sinkhorn import EmbeddingQueue, sinkhorn


def _cosine_scores(samples: int, prototypes: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(samples, 16, generator=g), dim=1)
    c = F.normalize(torch.randn(prototypes, 16, generator=g), dim=1)
    return z @ c.t()


def test_sinkhorn_converges_to_the_balanced_marginals():
    scores = _cosine_scores(600, 30)
    q = sinkhorn(scores, epsilon=0.05, iterations=200)
    torch.testing.assert_close(q.sum(1), torch.ones(600))  # every token: a distribution
    torch.testing.assert_close(q.sum(0), torch.full((30,), 600 / 30), rtol=1e-3, atol=0)


def test_three_sinkhorn_iterations_balance_prototypes_far_better_than_a_softmax():
    scores = _cosine_scores(2000, 100)
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    torch.testing.assert_close(q.sum(1), torch.ones(2000))
    share = q.sum(0) / (2000 / 100)
    softmax_share = (scores / 0.05).softmax(dim=1).sum(0) / (2000 / 100)
    assert (share - 1).abs().max() < 0.25
    assert (share - 1).abs().max() < 0.5 * (softmax_share - 1).abs().max()


def test_sinkhorn_does_not_overflow_at_small_epsilon():
    q = sinkhorn(torch.tensor([[50.0, -50.0], [-50.0, 50.0]]), epsilon=0.05, iterations=3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q, torch.eye(2))


def test_queue_is_fifo_and_used_only_once_full():
    queue = EmbeddingQueue(size=4, dim=1)
    queue.push(torch.tensor([[1.0], [2.0]]))
    assert not queue.is_full
    queue.push(torch.tensor([[3.0], [4.0], [5.0]]))
    assert queue.is_full
    assert queue.embeddings[:, 0].tolist() == [3.0, 4.0, 5.0, 1.0]  # newest first, 2 dropped
    restored = EmbeddingQueue(size=4, dim=1)
    restored.load_state_dict(queue.state_dict())
    assert restored.is_full and torch.equal(restored.embeddings, queue.embeddings)


def test_sampled_crops_respect_scales_and_overlaps():
    torch.manual_seed(0)
    params = get_cfg().LEOPART.CROPS
    crops = CropParams(
        num_global=2,
        global_size=224,
        global_scale=tuple(params.GLOBAL_SCALE),
        num_local=4,
        local_size=96,
        local_scale=tuple(params.LOCAL_SCALE),
        ratio=(0.75, 4 / 3),
        min_overlap=0.01,
        global_min_overlap=0.02,
        max_tries=1000,
    )
    area = 300 * 400
    for _ in range(20):
        boxes = sample_crop_boxes(300, 400, crops)
        assert boxes.shape == (6, 4)
        assert (
            (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 300).all()
        )
        shares = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / area
        assert ((shares[:2] >= 0.2) & (shares[:2] <= 1.0)).all()
        assert (shares[2:] <= 0.3).all()
        assert box_overlap(boxes[0], boxes[1]) / area > 0.02
        for local in boxes[2:]:
            assert all(box_overlap(local, g) / area > 0.01 for g in boxes[:2])


def test_an_identity_crop_aligns_to_itself():
    boxes = torch.tensor([[[10.0, 20.0, 110.0, 100.0], [10.0, 20.0, 110.0, 100.0]]])
    in_first, in_second, valid = pair_boxes(boxes, 0, 1, [64, 64])
    assert valid.item()
    torch.testing.assert_close(in_first, torch.tensor([[0.0, 0.0, 64.0, 64.0]]))
    torch.testing.assert_close(in_second, in_first)
    maps = torch.randn(1, 5, 8, 8)
    torch.testing.assert_close(
        align_to_boxes(maps, in_first, 8, 8), align_to_boxes(maps, in_second, 8, 8)
    )
    # The whole crop at its own resolution is the map itself.
    torch.testing.assert_close(align_to_boxes(maps, in_first, 8, 8), maps)


def test_swapped_pairs_give_the_same_boxes_swapped():
    torch.manual_seed(1)
    boxes = torch.tensor([[[0.0, 0.0, 80.0, 60.0], [30.0, 10.0, 120.0, 90.0]]])
    a_in_0, a_in_1, valid_a = pair_boxes(boxes, 0, 1, [64, 32])
    b_in_1, b_in_0, valid_b = pair_boxes(boxes, 1, 0, [64, 32])
    torch.testing.assert_close(a_in_0, b_in_0)
    torch.testing.assert_close(a_in_1, b_in_1)
    assert valid_a.item() and valid_b.item()
    # The intersection [30, 10, 80, 60] in crop 0's 64-pixel frame (80 x 60 px resized).
    torch.testing.assert_close(a_in_0, torch.tensor([[24.0, 64 / 6, 64.0, 64.0]]))


def test_aligned_crops_of_one_image_agree_on_their_intersection():
    """A linear image-level map seen through two different crops: RoIAlign over the shared box
    must read the same values from both (box bookkeeping and the aligned=True convention)."""
    stride, size = 8, 64
    boxes = torch.tensor([[[0.0, 0.0, 160.0, 120.0], [40.0, 30.0, 200.0, 150.0]]])

    def crop_map(box: torch.Tensor) -> torch.Tensor:
        cells = size // stride
        centres = (torch.arange(cells) + 0.5) / cells
        x = box[0] + centres * (box[2] - box[0])
        y = box[1] + centres * (box[3] - box[1])
        return (x[None, :] + 2 * y[:, None])[None, None]

    in_0, in_1, _ = pair_boxes(boxes, 0, 1, [size, size])
    inner = 2  # RoIAlign clamps samples within half a cell of the border: compare the inside
    first = align_to_boxes(crop_map(boxes[0, 0]), in_0, stride, 7)[..., inner:-inner, inner:-inner]
    second = align_to_boxes(crop_map(boxes[0, 1]), in_1, stride, 7)[..., inner:-inner, inner:-inner]
    torch.testing.assert_close(first, second, rtol=0, atol=1e-3)


def test_disjoint_crops_are_marked_invalid():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]])
    *_, valid = pair_boxes(boxes, 0, 1, [16, 16])
    assert not valid.item()


def test_loss_bins_select_entirely_foreground_or_background_bins():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :, :2] = True  # left half foreground
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
    fg = loss_bins(mask, box, 8, 4, "foreground")
    bg = loss_bins(mask, box, 8, 4, "background")
    assert fg[0, :, :2].all() and not fg[0, :, 2:].any()
    assert bg[0, :, 2:].all() and not bg[0, :, :2].any()
    assert loss_bins(mask, box, 8, 4, "all").all()
    # At 2 x 2 bins each bin straddles nothing: still exact halves.
    half = loss_bins(mask, box, 8, 2, "foreground")
    assert half[0, :, 0].all() and not half[0, :, 1].any()
    with pytest.raises(ValueError, match="LEOPART.LOSS.TOKENS"):
        loss_bins(mask, box, 8, 4, "objects")


def test_masked_cross_entropy_ignores_background_bins_exactly():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 5, 3, 3, generator=g)
    targets = torch.randn(2, 5, 3, 3, generator=g).softmax(dim=1)
    bins = torch.zeros(2, 3, 3, dtype=torch.bool)
    bins[0, 1, 1] = bins[1, 0, 2] = True
    loss = masked_cross_entropy(scores, targets, bins, temperature=0.1)
    expected = -np.mean(
        [
            (targets[0, :, 1, 1] * (scores[0, :, 1, 1] / 0.1).log_softmax(0)).sum(),
            (targets[1, :, 0, 2] * (scores[1, :, 0, 2] / 0.1).log_softmax(0)).sum(),
        ]
    )
    assert loss.item() == pytest.approx(float(expected), rel=1e-6)
    changed_scores, changed_targets = scores.clone(), targets.clone()
    changed_scores[~bins.unsqueeze(1).expand_as(scores)] = 100.0
    changed_targets[~bins.unsqueeze(1).expand_as(targets)] = 0.0
    assert masked_cross_entropy(changed_scores, changed_targets, bins, 0.1).item() == loss.item()
    assert masked_cross_entropy(scores, targets, torch.zeros_like(bins), 0.1) is None


def test_the_crop_mapper_gives_crops_and_boxes_and_skips_unreadable_images(tmp_path):
    cfg = get_cfg()
    cfg.LEOPART.CROPS.GLOBAL_SIZE, cfg.LEOPART.CROPS.LOCAL_SIZE = 32, 16
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)).save(good)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    torch.manual_seed(0)
    mapper = MultiCropMapper(cfg)
    out = mapper({"file_name": str(good)})
    assert [tuple(c.shape) for c in out["crops"]] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 4
    assert out["crops"][0].dtype == torch.uint8 and out["boxes"].shape == (6, 4)
    assert mapper({"file_name": str(broken)}) is None
    cfg.INPUT.BAD_IMAGE_POLICY = "fail"
    with pytest.raises(ValueError, match="broken.jpg"):
        MultiCropMapper(cfg)({"file_name": str(broken)})


def test_box_in_frame_scales_each_axis_by_its_own_factor():
    crop = torch.tensor([10.0, 20.0, 60.0, 120.0])  # 50 wide, 100 high -> 100 x 100
    box = torch.tensor([20.0, 20.0, 60.0, 70.0])
    torch.testing.assert_close(box_in_frame(box, crop, 100), torch.tensor([20.0, 0.0, 100.0, 50.0]))


def test_model_kwargs_are_parsed_as_literals_and_bad_entries_are_named():
    assert parse_model_kwargs(["depth=2", "embed_dim = 64", "qkv_bias=False"]) == {
        "depth": 2,
        "embed_dim": 64,
        "qkv_bias": False,
    }
    for bad in ("depth", "depth=two", "2x=3"):
        with pytest.raises(ValueError, match=f"MODEL_KWARGS entry {bad!r}"):
            parse_model_kwargs([bad])


def test_leopart_checkpoints_are_detected_and_give_student_or_teacher(tmp_path):
    student, teacher = torch.ones(2), torch.zeros(2)
    ours = tmp_path / "ours.pth"
    torch.save(
        {
            "model": {
                "student.model.w": student,
                "teacher.model.w": teacher,
                "head.mlp.0.weight": torch.ones(1),
                "prototypes.weight": torch.ones(1),
            },
            "iteration": 3,
        },
        ours,
    )
    state, fmt = read_state_dict(ours)
    assert fmt == "leopart" and list(state) == ["w"] and torch.equal(state["w"], student)
    state, _ = read_state_dict(ours, "leopart_teacher")
    assert list(state) == ["w"] and torch.equal(state["w"], teacher)
    reference = tmp_path / "reference.ckpt"
    torch.save(
        {"state_dict": {"model.w": student, "teacher.w": teacher, "projection_head.w": teacher}},
        reference,
    )
    state, fmt = read_state_dict(reference)
    assert fmt == "leopart" and list(state) == ["w"] and torch.equal(state["w"], student)
    assert math.isclose(float(read_state_dict(reference, "leopart_teacher")[0]["w"].sum()), 0.0)
