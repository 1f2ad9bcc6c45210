"""prepare_run_config: pseudo-labels registered and EMBED_DIM read from them, in one place."""

import json

import pytest

import uis_d2  # noqa: F401  (compat before detectron2)

# isort: split
from detectron2.data import DatasetCatalog

from uis_d2.config import get_cfg
from uis_d2.engine.run_config import prepare_run_config


def _labels(path, width: int | None) -> str:
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "score": 0.5}
    if width is not None:
        annotation["emb"] = [0.0] * width
    path.write_text(json.dumps({"images": [{"id": 1}], "annotations": [annotation]}))
    return str(path)


def _cfg(tmp_path, *widths: int | None):
    cfg = get_cfg()
    names = []
    for i, width in enumerate(widths):
        name = f"uis_test_run_config_{tmp_path.name}_{i}"
        cfg.INPUT.PSEUDO_MASKS.REGISTER.append(
            [name, _labels(tmp_path / f"{i}.json", width), str(tmp_path)]
        )
        names.append(name)
    cfg.DATASETS.TRAIN = tuple(names)
    return cfg


def test_registers_the_pseudo_labels_and_reads_their_embedding_width(tmp_path):
    cfg = _cfg(tmp_path, 12)
    prepared = prepare_run_config(cfg)
    assert prepared.MODEL.SOLOV2.EMBED_DIM == 12 and prepared.is_frozen()
    assert cfg.MODEL.SOLOV2.EMBED_DIM == 0  # the caller's cfg is left as it was
    assert cfg.DATASETS.TRAIN[0] in DatasetCatalog.list()


def test_labels_without_embeddings_give_no_head_and_a_set_width_is_kept(tmp_path):
    assert prepare_run_config(_cfg(tmp_path, None)).MODEL.SOLOV2.EMBED_DIM == 0
    cfg = _cfg(tmp_path, 12)
    cfg.MODEL.SOLOV2.EMBED_DIM = 7
    assert prepare_run_config(cfg).MODEL.SOLOV2.EMBED_DIM == 7


def test_training_sets_of_different_widths_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="mix embedding dimensions"):
        prepare_run_config(_cfg(tmp_path, 12, 8))


def test_absent_training_data_fails_for_training_and_warns_for_inference(tmp_path, caplog):
    cfg = _cfg(tmp_path, 12)
    (tmp_path / "0.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"0\.json"):
        prepare_run_config(cfg)
    prepared = prepare_run_config(cfg, require_training_data=False)
    assert prepared.MODEL.SOLOV2.EMBED_DIM == 0
    assert "EMBED_DIM stays 0" in caplog.text
