"""Config keys merge from yaml with _BASE_, and typos or invalid values fail naming the key."""

import ast
import inspect
from pathlib import Path

import pytest

import uis_d2  # noqa: F401  (compat before detectron2)
from uis_d2.config import defaults, load_config
from uis_d2.config.loading import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_yaml_with_base_merges_both_files(tmp_path):
    _write(tmp_path / "Base-test.yaml", "MODEL:\n  SOLOV2:\n    SIGMA: 0.3\n")
    child = _write(
        tmp_path / "child.yaml",
        "_BASE_: Base-test.yaml\nPROPOSALS:\n  SPECTRAL:\n    K: [2, 3]\n",
    )
    cfg = load_config(child)
    assert cfg.MODEL.SOLOV2.SIGMA == pytest.approx(0.3)
    assert list(cfg.PROPOSALS.SPECTRAL.K) == [2, 3]


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    bad = _write(tmp_path / "typo.yaml", "MODEL:\n  SOLOV2:\n    SIGMAA: 0.3\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml.*MODEL\.SOLOV2\.SIGMAA"):
        load_config(bad)


def test_removed_key_names_its_replacement(tmp_path):
    old = _write(tmp_path / "old.yaml", "MODEL:\n  FREEZE:\n    BACKBONE: True\n")
    with pytest.raises(
        ConfigError, match=r"old\.yaml.*MODEL\.FREEZE\.BACKBONE was removed.*FREEZE_AT"
    ):
        load_config(old)
    with pytest.raises(ConfigError, match="MODEL.FREEZE.BACKBONE was removed"):
        load_config(None, ["MODEL.FREEZE.BACKBONE", "False"])


def test_unknown_override_names_key():
    with pytest.raises(ConfigError, match="PROPOSALS.NMS_THRES"):
        load_config(None, ["PROPOSALS.NMS_THRES", "0.5"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("PROPOSALS.SPECTRAL.K", "[1, 2]", "k must be >= 2"),
        ("PROPOSALS.NMS_THRESH", "1.5", r"\[0, 1\]"),
        ("PROPOSALS.SALIENCY.OVERLAP_THRESH", "-0.1", r"\[0, 1\]"),
        ("INPUT.PSEUDO_MASKS.MIN_AREA", "-4", ">= 0"),
        ("MODEL.SOLOV2.LOSS.MODE", "'strong'", "one of"),
        ("MODEL.SOLOV2.NUM_GRIDS", "[40, 36]", "one entry per"),
        ("INPUT.COPY_PASTE.SCALE_RANGE", "[1.0, 0.5]", "low <= high"),
        ("SELF_TRAINING.SCORE_THRESH", "2.0", r"\[0, 1\]"),
    ],
)
def test_invalid_values_fail_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=rf"{key}.*{message}"):
        load_config(None, [key, value])


def test_odd_override_list_is_rejected():
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        load_config(None, ["PROPOSALS.NMS_THRESH"])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_every_default_key_has_a_comment():
    """Each assignment in the add_*_config functions is preceded by a comment line."""
    source = inspect.getsource(defaults)
    lines = source.splitlines()
    tree = ast.parse(source)
    uncommented = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute):
            name = node.targets[0].attr
            if not name.isupper() or _assigns_subnode(node):
                continue
            previous = lines[node.lineno - 2].strip()
            if not previous.startswith("#") and not _continues_commented_group(lines, node):
                uncommented.append(f"line {node.lineno}: {name}")
    assert not uncommented, uncommented


def _assigns_subnode(node: ast.Assign) -> bool:
    return isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "CN"


def _continues_commented_group(lines: list[str], node: ast.Assign) -> bool:
    """Allow a run of related keys under one comment (e.g. FOCAL_ALPHA, FOCAL_GAMMA)."""
    i = node.lineno - 2
    while i >= 0 and lines[i].strip() and not lines[i].strip().startswith("#"):
        if "=" not in lines[i]:
            return False
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#")


def test_every_shipped_config_loads_and_validates():
    """Every detectron2 config; configs/pipelines/ holds pipeline configs of another schema
    (tools/run_semantic_pipeline.py; tests/test_semantic_pipeline.py loads them)."""
    pipelines = REPO / "configs/pipelines"
    files = sorted(f for f in (REPO / "configs").rglob("*.yaml") if pipelines not in f.parents)
    assert files, "configs/ holds no yaml"
    for path in files:
        load_config(path)
