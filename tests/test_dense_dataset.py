"""Dense tokens of a dataset at a fixed square size (uis_d2/features/dense_dataset.py)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import uis_d2  # noqa: F401  (compat fixes before detectron2)
from uis_d2.data.image_io import BadImageError
from uis_d2.features.dense_dataset import (
    cached_dense_tokens,
    collect_dense_tokens,
    square_resize,
)
from uis_d2.features.patch_stats import PatchStats
from uis_d2.features.resnet import ResNetDense
from uis_d2.features.vit import TimmViTKeys

SIZE = 32


def _tiny_vit() -> TimmViTKeys:
    torch.manual_seed(0)
    kwargs = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8)
    vit = TimmViTKeys(name="tiny", arch="vit_tiny_patch16_224", model_kwargs=kwargs)
    return vit.eval()


@pytest.fixture
def images(tmp_path) -> list[dict]:
    """Records of four RGB images of different sizes and aspects, a corrupt file third."""
    rng = np.random.default_rng(0)
    records = []
    for index, (height, width) in enumerate([(40, 24), (33, 50), (0, 0), (64, 64), (20, 30)]):
        path = tmp_path / f"image_{index}.png"
        if height:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        else:
            path.write_bytes(b"not an image")
        records.append({"file_name": str(path), "image_id": index})
    return records


def test_shapes_order_and_corrupt_image_skipped_by_name(images):
    vit = _tiny_vit()
    dense = collect_dense_tokens(
        vit, images, SIZE, names=("patch_tokens", "cls_attention"), batch_size=3
    )
    kept = [r["file_name"] for r in images if not r["file_name"].endswith("image_2.png")]
    assert dense.file_names == kept
    assert dense.skipped == [images[2]["file_name"]]
    assert dense.tokens["patch_tokens"].shape == (4, 32, SIZE // 8, SIZE // 8)
    assert dense.tokens["cls_attention"].shape == (4, 2, SIZE // 8, SIZE // 8)
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in dense.tokens.values())
    # Row i is image i whatever the batching: a misaligned batch would swap rows.
    single = collect_dense_tokens(vit, [images[3]], SIZE, names=("patch_tokens",))
    torch.testing.assert_close(single.tokens["patch_tokens"][0], dense.tokens["patch_tokens"][2])


def test_fail_policy_names_the_file_and_bad_arguments_are_refused(images):
    extractor = PatchStats(patch_size=8)
    with pytest.raises(BadImageError, match="image_2.png"):
        collect_dense_tokens(extractor, images, SIZE, bad_image_policy="fail")
    with pytest.raises(ValueError, match="multiple of the stride 8"):
        collect_dense_tokens(extractor, images, 36)
    with pytest.raises(ValueError, match="bad_image_policy"):
        collect_dense_tokens(extractor, images, SIZE, bad_image_policy="ignore")


def test_resnet_patch_tokens_fall_back_to_its_features(images):
    torch.manual_seed(0)
    resnet = ResNetDense(name="r18", arch="resnet18", stage="res4").eval()
    dense = collect_dense_tokens(resnet, images[:2], SIZE, batch_size=2)
    assert dense.tokens["patch_tokens"].shape == (2, 256, SIZE // 16, SIZE // 16)
    pixels = np.asarray(Image.open(images[1]["file_name"]))
    with torch.no_grad():
        direct = resnet(resnet.normalise(square_resize(pixels, SIZE)[None]))
    torch.testing.assert_close(dense.tokens["patch_tokens"][1], direct.features[0])


def test_square_resize_squashes_instead_of_cropping():
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, 20:] = 255  # left half black, right half white
    out = square_resize(image, 16)
    assert out.shape == (3, 16, 16)
    assert out[:, :, :7].max() < 0.05 and out[:, :, 9:].min() > 0.95  # both halves kept, squashed


class _Counting(PatchStats):
    calls = 0

    def forward(self, images):
        type(self).calls += 1
        return super().forward(images)


def test_cache_reuses_parts_and_refuses_other_images(images, tmp_path):
    cache = tmp_path / "cache"
    extractor = _Counting(patch_size=8)
    first = cached_dense_tokens(extractor, images, SIZE, cache, batch_size=8, part_size=2)
    assert sorted(p.name for p in cache.iterdir()) == [f"tokens_0000{i}.pt" for i in range(3)]
    assert first.skipped == [images[2]["file_name"]] and len(first.file_names) == 4
    calls = _Counting.calls
    again = cached_dense_tokens(extractor, images, SIZE, cache, batch_size=8, part_size=2)
    assert _Counting.calls == calls  # every part read back, none recomputed
    assert again.file_names == first.file_names and again.skipped == first.skipped
    torch.testing.assert_close(again.tokens["patch_tokens"], first.tokens["patch_tokens"])
    with pytest.raises(ValueError, match="tokens_00000.pt holds the tokens of other images"):
        cached_dense_tokens(extractor, images[::-1], SIZE, cache, part_size=2)


def test_no_readable_image_gives_empty_tokens(images):
    dense = collect_dense_tokens(PatchStats(patch_size=8), [images[2]], SIZE)
    assert dense.file_names == [] and dense.skipped == [str(Path(images[2]["file_name"]))]
    assert dense.tokens["patch_tokens"].numel() == 0
