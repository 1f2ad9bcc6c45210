"""SOLOv2 meta-architecture: training forward/backward, inference format, freezing."""

from __future__ import annotations

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from training_cases import shrink_solov2

from uis_d2.config import get_cfg
from uis_d2.modeling.solov2.inference import InferenceParams, decode_image

WEAK_KEYS = {"loss_focal", "loss_avg_proj", "loss_max_proj", "loss_pairwise", "loss_sem"}


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny convs are dominated by thread hand-off on busy shared cores: one thread is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**overrides):
    """ResNet-18 FPN with 32-channel heads and small grids: a forward takes milliseconds."""
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SOLOv2"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    shrink_solov2(cfg)
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def make_inputs(batch: int = 2, size: int = 64, embedding_dim: int = 0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, size, size - 8), generator=gen, dtype=torch.uint8)
        masks = torch.zeros(2, size, size - 8, dtype=torch.bool)
        masks[0, 4:20, 6:30] = True
        masks[1, 30:60, 10:50] = True
        inst = Instances((size, size - 8))
        inst.gt_masks = BitMasks(masks)
        inst.gt_boxes = Boxes(torch.tensor([[6, 4, 30, 20], [10, 30, 50, 60]]).float())
        inst.gt_classes = torch.zeros(2, dtype=torch.long)
        if embedding_dim:
            inst.gt_embeddings = torch.randn(2, embedding_dim, generator=gen)
        inputs.append({"image": image, "instances": inst, "height": size, "width": size - 8})
    return inputs


def build(cfg):
    torch.manual_seed(0)
    return build_model(cfg)


def test_training_forward_backward_finite_losses_with_all_keys():
    model = build(tiny_cfg(**{"MODEL.SOLOV2.EMBED_DIM": 8}))
    model.train()
    with EventStorage(0):
        losses = model(make_inputs(embedding_dim=8))
    assert set(losses) == WEAK_KEYS
    for name, value in losses.items():
        assert torch.isfinite(value), name
    assert losses["loss_sem"] > 0
    sum(losses.values()).backward()
    head_grads = [p.grad for p in model.instance_head.parameters()]
    assert all(g is not None for g in head_grads)
    assert model.instance_head.embedding_pred.weight.grad.abs().sum() > 0


def test_losses_are_float32_under_float16_autocast():
    # Under AMP, sums over whole masks in float16 overflow (seen as NaN losses on a GPU).
    model = build(tiny_cfg())
    model.train()
    with EventStorage(2000), torch.autocast("cpu", dtype=torch.float16):
        losses = model(make_inputs())
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name


def test_pairwise_is_zero_at_the_start_of_warmup():
    model = build(tiny_cfg())
    model.train()
    with EventStorage(0):
        assert model(make_inputs())["loss_pairwise"] == 0
    with EventStorage(500):
        assert model(make_inputs())["loss_pairwise"] > 0


def test_supervised_mode_returns_dice():
    model = build(tiny_cfg(**{"MODEL.SOLOV2.LOSS.MODE": "supervised"}))
    model.train()
    losses = model(make_inputs())
    assert set(losses) == {"loss_focal", "loss_dice", "loss_sem"}
    assert 0 < losses["loss_dice"] <= 3.0


def test_embedding_head_gets_gradient_only_with_gt_embeddings():
    model = build(tiny_cfg(**{"MODEL.SOLOV2.EMBED_DIM": 8}))
    model.train()
    losses = model(make_inputs(embedding_dim=0))
    assert losses["loss_sem"] == 0
    sum(losses.values()).backward()
    grad = model.instance_head.embedding_pred.weight.grad
    assert grad is not None and grad.abs().sum() == 0  # in the graph for DDP, but zero


def test_embeddings_without_an_embedding_head_are_an_error_not_an_untrained_loss():
    model = build(tiny_cfg())  # EMBED_DIM 0: a cfg that never went through prepare_run_config
    model.train()
    with pytest.raises(ValueError, match="no embedding head.*prepare_run_config"):
        model(make_inputs(embedding_dim=8))


def test_no_positive_still_gives_every_head_parameter_a_gradient():
    model = build(tiny_cfg(**{"MODEL.SOLOV2.EMBED_DIM": 4}))
    model.train()
    inputs = make_inputs(batch=1)
    empty = Instances(inputs[0]["instances"].image_size)
    empty.gt_masks = BitMasks(torch.zeros(0, 64, 56, dtype=torch.bool))
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.long)
    inputs[0]["instances"] = empty
    losses = model(inputs)
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name


def test_inference_output_format():
    model = build(tiny_cfg())
    model.eval()
    inputs = make_inputs(batch=2)
    inputs[1]["height"], inputs[1]["width"] = 100, 80  # the original image was larger
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 2
    inst = outputs[1]["instances"]
    assert inst.image_size == (100, 80)
    assert inst.pred_masks.dtype == torch.bool
    assert inst.pred_masks.shape[1:] == (100, 80)
    assert len(inst) > 0
    assert inst.scores.shape == inst.pred_classes.shape == (len(inst),)
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])


def test_decode_image_masks_thresholds_and_boxes_from_mask_extents():
    params = InferenceParams(
        score_thr=0.1,
        mask_thr=0.5,
        nms_pre=10,
        update_thr=0.05,
        max_per_img=5,
        nms_kernel="gaussian",
        nms_sigma=2.0,
    )
    # One channel of mask features: +1 on a square, -1 elsewhere; kernel 20 makes the mask
    # probability sigmoid(+-20), i.e. exactly the square.
    feats = -torch.ones(1, 8, 8)
    feats[0, 2:5, 1:7] = 1.0
    kernels = torch.tensor([[20.0], [20.0]])
    scores = torch.tensor([[0.9], [0.05]])  # the second cell is below SCORE_THR
    strides = torch.tensor([8, 8])
    inst = decode_image(scores, kernels, strides, feats, (32, 32), (64, 64), params)
    assert len(inst) == 1
    assert inst.scores[0] == pytest.approx(0.9, abs=1e-3)  # maskness ~ 1
    box = inst.pred_boxes.tensor[0].tolist()
    mask = inst.pred_masks[0]
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert box == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    # Square spans rows 8..20, cols 4..28 of the 32 px input, i.e. 16..40 x 8..56 at 64 px.
    assert box == pytest.approx([8, 16, 56, 40], abs=2)
    # Input 24 x 32 padded to 32 x 32: the padding is cropped before resizing, not squeezed in.
    cropped = decode_image(scores, kernels, strides, feats, (24, 32), (24, 32), params)
    assert cropped.pred_boxes.tensor[0].tolist() == pytest.approx([4, 8, 28, 20], abs=1)


def test_decode_image_drops_masks_not_larger_than_their_stride():
    params = InferenceParams(0.1, 0.5, 10, 0.05, 5, "gaussian", 2.0)
    feats = -torch.ones(1, 8, 8)
    feats[0, 0, 0:3] = 1.0  # 3 pixels <= stride 8
    inst = decode_image(
        torch.tensor([[0.9]]),
        torch.tensor([[20.0]]),
        torch.tensor([8]),
        feats,
        (32, 32),
        (32, 32),
        params,
    )
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 32, 32)


def test_decode_image_drops_a_mask_that_lies_only_in_the_padding():
    """Input 24 x 32 padded to 32 x 32: a mask on the bottom (padding) rows is empty once the
    padding is cropped; returning it would be a sure false positive with a zero box."""
    params = InferenceParams(0.1, 0.5, 10, 0.05, 5, "gaussian", 2.0)
    feats = -torch.ones(2, 8, 8)
    feats[0, 6:8, 1:7] = 1.0  # rows 24..32 of the input: padding only
    feats[1, 1:4, 1:7] = 1.0  # inside the image
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    inst = decode_image(
        torch.tensor([[0.9], [0.8]]),
        torch.tensor([[20.0, 0.0], [0.0, 20.0]]),
        torch.tensor([8, 8]),
        feats,
        (24, 32),
        (24, 32),
        params,
        embeddings=embeddings,
    )
    assert len(inst) == 1 and inst.pred_masks[0].any()
    assert inst.scores[0] == pytest.approx(0.8, abs=1e-3)
    # The embedding of the kept instance's own cell travels with it.
    assert inst.pred_embeddings.tolist() == [[0.0, 1.0]]


def test_model_predicts_one_embedding_per_instance():
    model = build(tiny_cfg(**{"MODEL.SOLOV2.EMBED_DIM": 6}))
    model.eval()
    with torch.no_grad():
        inst = model(make_inputs(batch=1))[0]["instances"]
    assert len(inst) > 0 and inst.pred_embeddings.shape == (len(inst), 6)


@pytest.mark.parametrize("freeze_fpn", [False, True])
def test_frozen_parts_stay_bit_identical_after_sgd_steps(freeze_fpn):
    cfg = tiny_cfg(**{"MODEL.BACKBONE.FREEZE_AT": 5, "MODEL.FREEZE.FPN": freeze_fpn})
    cfg.MODEL.RESNETS.NORM = "BN"  # plain BatchNorm must be frozen too (running stats)
    model = build(cfg)
    model.train()
    bottom_up = {k: v.clone() for k, v in model.backbone.bottom_up.state_dict().items()}
    fpn = {
        k: v.clone()
        for k, v in model.backbone.state_dict().items()
        if not k.startswith("bottom_up")
    }
    heads = {k: v.clone() for k, v in model.mask_head.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for step in range(3):
        with EventStorage(1000 + step):
            losses = model(make_inputs(seed=step))
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    for k, v in model.backbone.bottom_up.state_dict().items():
        assert torch.equal(v, bottom_up[k]), k
    for p in model.backbone.bottom_up.parameters():
        assert not p.requires_grad and p.grad is None
    fpn_now = {
        k: v for k, v in model.backbone.state_dict().items() if not k.startswith("bottom_up")
    }
    fpn_unchanged = all(torch.equal(v, fpn[k]) for k, v in fpn_now.items())
    assert fpn_unchanged == freeze_fpn
    assert any(not torch.equal(v, heads[k]) for k, v in model.mask_head.state_dict().items())


def test_unknown_feature_name_is_reported_with_its_key():
    cfg = tiny_cfg()
    cfg.MODEL.SOLOV2.MASK_IN_FEATURES = ["p2", "p9"]
    with pytest.raises(ValueError, match="MASK_IN_FEATURES.*p9"):
        build_model(cfg)
