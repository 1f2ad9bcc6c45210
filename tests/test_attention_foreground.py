"""The AttentionMass foreground provider: exact mass share, blur, small components, heads, and
the provider on a tiny ViT and on the weight-free surrogate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.config import get_cfg, load_config
from uis_d2.config.loading import ConfigError
from uis_d2.data.synthetic import render_scene
from uis_d2.features.base import extract_features_and_tokens
from uis_d2.features.vit import TimmViTKeys
from uis_d2.foreground import FOREGROUND_REGISTRY
from uis_d2.foreground.attention import (
    AttentionMass,
    AttentionMassParams,
    attention_mass_foreground,
    drop_small_components,
    gaussian_blur,
    mass_share_mask,
)


@pytest.mark.parametrize(
    ("share", "kept"),
    [(0.5, [0.5]), (0.6, [0.5, 0.25]), (0.75, [0.5, 0.25]), (0.8, [0.5, 0.25, 0.125])],
)
def test_mass_share_keeps_the_largest_entries_holding_the_share(share, kept):
    # Binary fractions, so every cumulative share is exact. At 0.75 the two largest hold
    # exactly 0.75: the next entry (cumulative share 0.25, not > 0.25) is not needed; at 0.8
    # one of the two equal smallest entries is, the first in raster order being left out.
    values = torch.tensor([[0.125, 0.5], [0.25, 0.125]])
    mask = mass_share_mask(values, share)
    assert sorted(values[mask].tolist(), reverse=True) == kept


def test_mass_share_is_the_smallest_top_set_reaching_the_share():
    values = torch.rand(200, generator=torch.Generator().manual_seed(0))
    for share in (0.1, 0.5, 0.6, 0.65, 0.9):
        mask = mass_share_mask(values, share)
        total = values.sum()
        assert values[mask].min() >= values[~mask].max()
        assert values[mask].sum() >= share * total
        assert values[mask].sum() - values[mask].min() < share * total
    assert not mass_share_mask(torch.zeros(3, 3), 0.6).any()


def test_gaussian_blur_is_the_normalised_7x7_kernel_of_sigma_0_6():
    delta = torch.zeros(9, 9)
    delta[4, 4] = 1.0
    blurred = gaussian_blur(delta, 7, 0.6)
    weights = [math.exp(-(x**2) / (2 * 0.6**2)) for x in range(-3, 4)]
    one_d = torch.tensor(weights) / sum(weights)
    expected = torch.zeros(9, 9)
    expected[1:8, 1:8] = one_d[:, None] * one_d[None, :]
    assert torch.allclose(blurred, expected, atol=1e-7)
    # Grids smaller than the kernel's half width are blurred too (border replicated).
    assert torch.allclose(gaussian_blur(torch.full((2, 3), 0.25), 7, 0.6), torch.full((2, 3), 0.25))


def test_components_of_at_most_two_patches_are_dropped_with_8_connectivity():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0:2, 0:2] = True  # 4 patches: kept
    mask[2, 2] = True  # diagonal to the block: joins it (8-connected)
    mask[5, 0:2] = True  # 2 patches alone: dropped
    mask[0, 5] = True  # 1 patch alone: dropped
    kept = drop_small_components(mask, 2)
    expected = np.zeros((6, 6), dtype=bool)
    expected[0:2, 0:2] = expected[2, 2] = True
    assert np.array_equal(kept, expected)
    assert np.array_equal(drop_small_components(mask, 0), mask)


def test_attention_mass_foreground_on_hand_built_attention():
    attention = torch.zeros(2, 6, 6)
    attention[0, 1:4, 1:4] = 0.1  # head 0: a 3 x 3 blob holding 0.9 ...
    attention[0, 5, 5] = 0.1  # ... and a lone patch holding 0.1
    attention[1, 5, 0:3] = 1.0 / 3  # head 1: a row of three in the bottom-left corner
    blob = torch.zeros(6, 6, dtype=torch.bool)
    blob[1:4, 1:4] = True
    everything = AttentionMassParams((0,), 1.0, 0, 0.6, 0)
    assert torch.equal(attention_mass_foreground(attention, everything), attention[0] > 0)
    lone_dropped = AttentionMassParams((0,), 1.0, 0, 0.6, 2)
    assert torch.equal(attention_mass_foreground(attention, lone_dropped), blob)
    row = attention_mass_foreground(attention, AttentionMassParams((1,), 0.6, 0, 0.6, 0))
    assert row[5, 0:3].sum() == 2 and row.sum() == 2  # two thirds reach 60%
    # All heads averaged: the blob (0.45) and the row (0.5) hold the mass with the lone patch.
    both = attention_mass_foreground(attention, AttentionMassParams((), 1.0, 0, 0.6, 2))
    assert torch.equal(both, blob | (attention[1] > 0))
    eighths = torch.zeros(1, 4, 4)
    eighths[0, 1:3] = 0.125
    kept = attention_mass_foreground(eighths, AttentionMassParams((), 0.6, 0, 0.6, 0))
    assert kept.sum() == 5  # 5/8 >= 60% > 4/8 (exact in binary)


def test_blur_spreads_the_kept_region_and_out_of_range_heads_are_named():
    attention = torch.zeros(1, 7, 7)
    attention[0, 3, 3] = 1.0
    sharp = attention_mass_foreground(attention, AttentionMassParams((), 0.8, 0, 0.6, 0))
    assert sharp.sum() == 1
    # Blurred, the centre keeps 0.44 of the mass and its 4 neighbours 0.11 each, the diagonals
    # and beyond 0.12 together: 80% is the centre and the 4 neighbours.
    blurred = attention_mass_foreground(attention, AttentionMassParams((), 0.8, 7, 0.6, 0))
    cross = torch.zeros(7, 7, dtype=torch.bool)
    cross[3, 2:5] = cross[2:5, 3] = True
    assert torch.equal(blurred, cross)
    with pytest.raises(ValueError, match=r"ATTENTION_MASS.HEADS = \[1\].*1 heads"):
        attention_mass_foreground(attention, AttentionMassParams((1,), 0.6, 7, 0.6, 0))


def _synthetic_cfg():
    cfg = get_cfg()
    cfg.merge_from_file("configs/proposals/synthetic.yaml")
    return cfg


def test_provider_on_a_tiny_vit_gives_grid_maps_and_reuses_handed_tokens():
    torch.manual_seed(0)
    node = get_cfg().PROPOSALS.SALIENCY.EXTRACTOR.clone()
    node.ARCH = "vit_small_patch16_224"
    kwargs = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)
    extractor = TimmViTKeys(node, 32, 64, model_kwargs=kwargs)
    params = AttentionMassParams((), 0.6, 7, 0.6, 2)
    provider = AttentionMass(extractor=extractor, params=params)
    assert extractor.requested_tokens == {"cls_attention"}
    images = [torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)]
    (own,) = provider(images)
    assert own.dtype == torch.bool and own.shape == (4, 5) and own.any()
    features, tokens = extract_features_and_tokens(extractor, images)
    assert torch.equal(provider(images, features, tokens)[0], own)
    with pytest.raises(ValueError, match=r"lack \['cls_attention'\]"):
        provider(images, features, [{}])


def test_provider_from_config_on_the_weight_free_surrogate():
    cfg = _synthetic_cfg()
    provider = FOREGROUND_REGISTRY.get("AttentionMass")(cfg)
    assert provider.describe()["mass"] == 0.6 and provider.describe()["blur_size"] == 7
    rgb, _ = render_scene(np.random.default_rng(1))
    image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    (foreground,) = provider([image])
    assert foreground.shape == tuple(s // 8 for s in provider.extractor.preprocess(image).shape[1:])
    assert 0 < foreground.float().mean() < 0.6


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ATTENTION_MASS.MASS", "1.5"),
        ("ATTENTION_MASS.BLUR_SIZE", "4"),
        ("ATTENTION_MASS.BLUR_SIGMA", "0.0"),
        ("ATTENTION_MASS.HEADS", "[-1]"),
    ],
)
def test_invalid_attention_mass_settings_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"PROPOSALS.FOREGROUND.{key}"):
        load_config(None, [f"PROPOSALS.FOREGROUND.{key}", value])
