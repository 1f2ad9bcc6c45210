"""The foreground registry: combinations, resizing, building by name, and the spectral
generator's saliency through a provider."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401
from uis_d2.config import get_cfg, load_config
from uis_d2.data.synthetic import render_scene
from uis_d2.foreground import CombinedForeground, ForegroundProvider, build_foreground_provider
from uis_d2.foreground.base import build_saliency_extractor, resize_map, run_providers
from uis_d2.proposals import build_pseudo_mask_generator
from uis_d2.proposals.spectral_generator import SpectralBorder, SpectralProposalGenerator


class _Fixed(ForegroundProvider):
    """Returns the same map for every image."""

    def __init__(self, foreground: torch.Tensor) -> None:
        self.foreground = foreground

    def __call__(self, images, features=None, tokens=None, names=None, clusters=None):
        return [self.foreground.clone() for _ in images]

    def describe(self):
        return {"provider": "fixed"}


def _grid(rows: slice, cols: slice, size=(4, 4)) -> torch.Tensor:
    out = torch.zeros(size, dtype=torch.bool)
    out[rows, cols] = True
    return out


def test_combinations_intersect_or_unite_at_the_first_providers_resolution():
    left = _Fixed(_grid(slice(None), slice(0, 2)))  # left half, 4 x 4
    top_pixels = _Fixed(_grid(slice(0, 4), slice(None), size=(8, 8)))  # top half, 8 x 8 pixels
    image = [torch.zeros((3, 8, 8), dtype=torch.uint8)]
    (both,) = CombinedForeground([left, top_pixels], "intersection")(image)
    (either,) = CombinedForeground([left, top_pixels], "union")(image)
    assert both.shape == (4, 4) and both.sum() == 4 and both[:2, :2].all()
    assert either.sum() == 12 and not either[3, 3]
    with pytest.raises(ValueError, match="PROPOSALS.SALIENCY.COMBINE"):
        CombinedForeground([left], "xor")


def test_resize_map_shrinks_by_majority_and_grows_back_to_the_same_grid():
    grid = _grid(slice(0, 1), slice(0, 2))
    assert torch.equal(resize_map(resize_map(grid, (8, 8)), (4, 4)), grid)
    pixels = torch.zeros((8, 8), dtype=torch.bool)
    pixels[0, 0] = True  # 1 of a cell's 4 pixels: not a majority
    assert not resize_map(pixels, (4, 4)).any()


def _synthetic_cfg():
    cfg = get_cfg()
    cfg.merge_from_file("configs/proposals/synthetic.yaml")
    return cfg


def test_providers_are_built_by_name_with_clear_errors():
    cfg = _synthetic_cfg()
    assert isinstance(build_foreground_provider(cfg), SpectralBorder)
    cfg.PROPOSALS.SALIENCY.PROVIDERS = ["NoSuchProvider"]
    with pytest.raises(KeyError, match="PROPOSALS.SALIENCY.PROVIDERS.*NoSuchProvider"):
        build_foreground_provider(cfg)
    cfg.PROPOSALS.SALIENCY.PROVIDERS = []
    with pytest.raises(ValueError, match="PROPOSALS.SALIENCY.PROVIDERS is empty"):
        build_foreground_provider(cfg)
    cfg.PROPOSALS.SALIENCY.PROVIDERS = ["SpectralBorder", "SpectralBorder"]
    combined = build_foreground_provider(cfg)
    assert isinstance(combined, CombinedForeground) and combined.mode == "intersection"


def _scenes(count: int) -> list[torch.Tensor]:
    return [
        torch.from_numpy(render_scene(np.random.default_rng([4, i]))[0]).permute(2, 0, 1)
        for i in range(count)
    ]


def _same(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(torch.as_tensor(x.masks), torch.as_tensor(y.masks))
        np.testing.assert_array_equal(x.scores, y.scores)


def test_spectral_border_provider_reproduces_the_built_in_saliency():
    """With separate saliency features the built-in path clusters them on their own, as the
    registered provider does: the same proposals either way."""
    cfg = _synthetic_cfg()
    cfg.PROPOSALS.SALIENCY.EXTRACTOR.PATCH_SIZE = 16  # a distinct module and grid
    built_in = build_pseudo_mask_generator(cfg)
    assert built_in.saliency_extractor is not built_in.extractor
    provider = SpectralBorder(
        extractor=built_in.saliency_extractor, k=2, spectral=built_in.spectral
    )
    via_provider = SpectralProposalGenerator(
        extractor=built_in.extractor,
        saliency_extractor=None,
        foreground=provider,
        spectral=built_in.spectral,
        saliency=built_in.saliency,
        nms_thresh=built_in.nms_thresh,
    )
    images = _scenes(3)
    _same(built_in(images), via_provider(images))


def test_an_all_foreground_provider_filters_nothing():
    cfg = _synthetic_cfg()
    cfg.PROPOSALS.SALIENCY.ENABLED = False
    plain = build_pseudo_mask_generator(cfg)
    everything = SpectralProposalGenerator(
        extractor=plain.extractor,
        saliency_extractor=None,
        foreground=_Fixed(torch.ones((3, 3), dtype=torch.bool)),  # resized to each grid
        spectral=plain.spectral,
        saliency=plain.saliency,
        nms_thresh=plain.nms_thresh,
    )
    images = _scenes(2)
    _same(plain(images), everything(images))


def test_a_combination_reuses_the_instance_clustering_of_a_shared_extractor(monkeypatch):
    """SpectralBorder in a combination, on the instance extractor, takes the generator's label
    maps: the proposals of the built-in default and no clustering call beyond its own."""
    from uis_d2.proposals import spectral_generator

    cfg = _synthetic_cfg()
    built_in = build_pseudo_mask_generator(cfg)
    assert built_in.saliency_extractor is built_in.extractor
    combined = SpectralProposalGenerator(
        extractor=built_in.extractor,
        saliency_extractor=None,
        foreground=CombinedForeground(
            [
                SpectralBorder(extractor=built_in.extractor, k=2, spectral=built_in.spectral),
                _Fixed(torch.ones((3, 3), dtype=torch.bool)),
            ],
            "intersection",
        ),
        spectral=built_in.spectral,
        saliency=built_in.saliency,
        nms_thresh=built_in.nms_thresh,
    )
    calls = []
    clustering = spectral_generator.spectral_clustering
    monkeypatch.setattr(
        spectral_generator,
        "spectral_clustering",
        lambda *a, **k: calls.append(1) or clustering(*a, **k),
    )
    images = _scenes(3)
    expected = built_in(images)
    default_calls = len(calls)
    _same(expected, combined(images))
    assert default_calls > 0 and len(calls) == 2 * default_calls


def _count_forwards(monkeypatch, extractor) -> list[int]:
    """Appends the batch size of every forward of ``extractor``."""
    calls: list[int] = []
    forward = extractor.forward
    monkeypatch.setattr(extractor, "forward", lambda x: calls.append(len(x)) or forward(x))
    return calls


def test_a_combination_builds_and_runs_one_saliency_extractor_for_its_providers(monkeypatch):
    """Two providers on a saliency extractor distinct from the instance one share one module
    and one forward per batch (each ran its own before), with the maps they give apart."""
    cfg = _synthetic_cfg()
    cfg.PROPOSALS.SALIENCY.EXTRACTOR.PATCH_SIZE = 16
    cfg.PROPOSALS.SALIENCY.PROVIDERS = ["SpectralBorder", "AttentionMass"]
    generator = build_pseudo_mask_generator(cfg)
    combined = generator.foreground
    assert isinstance(combined, CombinedForeground)
    assert combined.extractor is not generator.extractor
    assert all(p.extractor is combined.extractor for p in combined.providers)
    images = _scenes(3)
    apart = [
        build_foreground_provider(cfg, name)(images) for name in ("SpectralBorder", "AttentionMass")
    ]
    forwards = _count_forwards(monkeypatch, combined.extractor)
    maps = combined(images)
    assert sum(forwards) == 3  # each image through the extractor once, for both providers
    for together, border, mass in zip(maps, *apart, strict=True):
        assert torch.equal(together, border & resize_map(mass, tuple(border.shape)))
    generator(images)
    assert sum(forwards) == 6


def test_a_combination_runs_no_forward_that_its_providers_do_not_read(monkeypatch):
    """MaskCutUnion cutting its own square input ignores handed features: a combination of it
    and a provider without features leaves the one forward to it."""
    cfg = load_config(
        "configs/proposals/synthetic_maskcut.yaml",
        [
            "PROPOSALS.MASKCUT.INPUT_SIZE",
            "128",
            "PROPOSALS.FOREGROUND.MASKCUT_UNION.SHARED_FEATURES",
            "False",
        ],
    )
    union = build_foreground_provider(cfg, "MaskCutUnion")
    assert not union.reads_extractor_output()
    everything = _Fixed(torch.ones((4, 4), dtype=torch.bool))
    combined = CombinedForeground([everything, union], "intersection")
    assert combined.extractor is union.extractor and not combined.reads_extractor_output()
    forwards = _count_forwards(monkeypatch, union.extractor)
    images = _scenes(2)
    (first, second) = combined(images)
    assert forwards == [2]  # MaskCut's own square input, once
    assert first.shape == (4, 4)


def test_providers_run_apart_share_one_forward_of_their_extractor(monkeypatch):
    """run_providers (the foreground evaluation's batch step) puts each image through the shared
    extractor once, not once per provider, and gives each provider's own maps."""
    cfg = _synthetic_cfg()
    shared = build_saliency_extractor(cfg)
    names = ("SpectralBorder", "AttentionMass", "MaskDistillMiner")
    providers = [build_foreground_provider(cfg, name, extractor=shared) for name in names]
    images = _scenes(2)
    alone = [provider(images) for provider in providers]
    forwards = _count_forwards(monkeypatch, shared)
    together = run_providers(providers, shared, images, names=["a.png", "b.png"])
    assert sum(forwards) == len(images)
    for maps, own in zip(together, alone, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(maps, own, strict=True))
