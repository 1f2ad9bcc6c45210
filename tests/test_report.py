"""The demo report: console table, loss curves, overlays and the HTML page in real Chromium."""

import json
import re

import cv2
import numpy as np
import pytest
from browser import loaded_pictures, rendered_dom

import uis_d2  # noqa: F401
from uis_d2.report.curves import plot_loss_curves, read_loss_history
from uis_d2.report.overlays import draw_masks
from uis_d2.report.page import TABLE_KEYS, format_table, write_report

ROWS = {
    "proposals": dict.fromkeys(TABLE_KEYS, 1.5),
    "trained": {k: 10.0 + i for i, k in enumerate(TABLE_KEYS)},
}


def test_format_table_has_one_aligned_row_per_method():
    lines = format_table(ROWS).splitlines()
    assert len(lines) == 4
    assert len({len(line) for line in lines}) == 1
    assert lines[3].split("|")[1].strip() == "trained"
    assert [float(c) for c in lines[3].split("|")[2:-1]] == [10.0 + i for i in range(6)]


def test_loss_history_skips_evaluation_lines_and_plots(tmp_path):
    metrics = tmp_path / "metrics.json"
    lines = [
        {"iteration": 0, "total_loss": 3.0, "loss_focal": 1.0, "lr": 0.1},
        {"iteration": 1, "total_loss": 2.0, "loss_focal": 0.5, "lr": 0.1},
        {"segm/AP": 4.0},
    ]
    metrics.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    history = read_loss_history(metrics)
    assert history == {"total_loss": [(0, 3.0), (1, 2.0)], "loss_focal": [(0, 1.0), (1, 0.5)]}
    png = plot_loss_curves(metrics, tmp_path / "curves.png")
    assert cv2.imread(str(png)).shape[2] == 3


def test_loss_curves_without_losses_is_an_error(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"segm/AP": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no loss values"):
        plot_loss_curves(metrics, tmp_path / "x.png")


def test_draw_masks_changes_only_masked_pixels():
    image = np.full((10, 10, 3), 100, np.uint8)
    mask = np.zeros((10, 10), bool)
    mask[3:7, 3:7] = True
    out = draw_masks(image, [mask])
    assert (out[~mask] == 100).all()
    assert (out[4:6, 4:6] != 100).any(axis=-1).all()


def _report(tmp_path, image_names):
    out = tmp_path / "demo"
    (out / "overlays").mkdir(parents=True)
    paths = []
    for name in image_names:
        path = out / "overlays" / name
        cv2.imwrite(str(path), np.full((8, 12, 3), 90, np.uint8))
        paths.append(path)
    return out, paths


def test_draw_masks_without_masks_returns_the_image():
    image = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    assert np.array_equal(draw_masks(image, []), image)


def test_report_renders_table_and_pictures_in_chromium(tmp_path):
    out, paths = _report(tmp_path, ["a.png", "b.png"])
    page = write_report(out, ROWS, [("Overlays", paths)], ["command: x"])
    dom = rendered_dom(page)
    table = re.search(r"<table id=\"metrics\">(.*?)</table>", dom, re.S).group(1)
    assert "trained" in table and "15.00" in table and "1.50" in table
    assert loaded_pictures(dom) == (2, 2)


def test_render_check_sees_a_missing_picture(tmp_path):
    out, paths = _report(tmp_path, ["a.png", "b.png"])
    paths[1].unlink()
    page = write_report(out, ROWS, [("Overlays", paths)], [])
    assert loaded_pictures(rendered_dom(page)) == (1, 2)
