"""Pseudo-classes (uis_d2/pseudo_classes, tools/cluster_pseudo_classes.py): both clustering
methods on planted clusters, the outlier filter, the spectral embedding and graph against
scikit-learn, region-level scores, bad input, and the tool end to end on synthetic scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import uis_d2  # noqa: F401  (compat fixes before detectron2)

# isort: split
from scripts import REPO, load_script
from uis_d2.data.pseudo_labels import EmbeddingLookup, EmbeddingStoreWriter, embedding_store_path
from uis_d2.data.synthetic import generate_synthetic_dataset
from uis_d2.data.validation import validate_coco_json
from uis_d2.pseudo_classes import embeddings as embeddings_module
from uis_d2.pseudo_classes.clustering import (
    assign_to_clusters,
    centre_distances,
    cluster,
    knn_connectivity,
    outlier_filter,
    spectral_embedding,
    whiten,
)
from uis_d2.pseudo_classes.embeddings import MASKED_FILL, box_bounds, cache_path, region_inputs
from uis_d2.pseudo_classes.evaluation import adjusted_rand_index, normalized_mutual_info

NUM_CATEGORIES = 6


def planted_blobs(per_cluster: int = 50, dim: int = 16, seed: int = 0):
    """Six well-separated Gaussian blobs (centres 10 apart per axis, std 0.3)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((NUM_CATEGORIES, dim)) * 10
    truth = np.repeat(np.arange(NUM_CATEGORIES), per_cluster)
    points = centres[truth] + 0.3 * rng.standard_normal((len(truth), dim))
    order = rng.permutation(len(truth))
    return points[order].astype(np.float32), truth[order]


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    table = np.zeros((a.max() + 1, b.max() + 1), dtype=np.int64)
    np.add.at(table, (a, b), 1)
    return table


@pytest.mark.parametrize("method", ["kmeans", "spectral"])
def test_methods_recover_planted_clusters(method):
    points, truth = planted_blobs()
    result = cluster(points, method, NUM_CATEGORIES, seed=0)
    assert adjusted_rand_index(contingency(result.labels, truth)) == 1.0
    assert result.cluster_sizes.tolist() == [50] * NUM_CATEGORIES
    assert result.labels[0] == 0  # numbered by first appearance
    width = 16 if method == "kmeans" else NUM_CATEGORIES
    assert result.space.shape == (len(points), width)


def test_kmeans_space_is_whitened_and_normalised():
    x = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, -2.0], [2.0, 5.0, 0.0]])
    white = whiten(x)
    np.testing.assert_allclose(white.std(axis=0), [1.0, 0.0, 1.0])  # constant column kept
    np.testing.assert_allclose(white[:, 1], 5.0)
    space = cluster(x, "kmeans", 2, seed=0).space
    np.testing.assert_allclose(np.linalg.norm(space, axis=1), 1.0, rtol=1e-6)


def test_filter_drops_exactly_the_farthest_share_of_each_cluster():
    rng = np.random.default_rng(1)
    sizes = {0: 10, 1: 7, 2: 3, 3: 25, 4: 15}
    labels = rng.permutation(np.repeat(list(sizes), list(sizes.values())))
    distances = rng.uniform(0, 1, len(labels))
    keep = outlier_filter(distances, labels, 0.2)
    for label, size in sizes.items():
        members = np.flatnonzero(labels == label)
        dropped = members[~keep[members]]
        assert len(dropped) == int(np.floor(0.2 * size))  # 2, 1, 0, 5, 3
        if len(dropped):
            assert distances[dropped].min() > distances[members[keep[members]]].max()
    assert (~keep).sum() == 2 + 1 + 0 + 5 + 3
    assert outlier_filter(distances, labels, 0.0).all()
    # 0.29 * 100 is 28.999... in floating point: still 29 dropped.
    assert (~outlier_filter(np.arange(100.0), np.zeros(100, int), 0.29)).sum() == 29


def test_filter_ties_drop_the_earlier_point():
    keep = outlier_filter(np.array([0.5, 0.9, 0.9, 0.1, 0.9]), np.zeros(5, int), 0.4)
    assert keep.tolist() == [True, False, False, True, True]


def test_centre_distances_are_cosine_to_the_member_mean():
    space = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, -3.0]])
    labels = np.array([0, 0, 1, 1])
    distances = centre_distances(space, labels, 3)  # cluster 2 empty
    # Cluster 0's centre (0.5, 0.5) is 45 degrees from both members; cluster 1's (1, -1.5).
    np.testing.assert_allclose(distances[:2], 1 - np.cos(np.pi / 4))
    centre = np.array([1.0, -1.5]) / np.hypot(1.0, 1.5)
    np.testing.assert_allclose(distances[2:], [1 - centre[0], 1 + centre[1]])


def test_filter_on_planted_outliers_removes_them():
    points, truth = planted_blobs(per_cluster=40)
    far = np.flatnonzero(truth == 2)[:8]  # 20% of cluster 2, pushed off its centre
    points[far] += 3.0 * np.random.default_rng(2).standard_normal((8, points.shape[1]))
    result = cluster(points, "kmeans", NUM_CATEGORIES, seed=0)
    distances = centre_distances(result.space, result.labels, NUM_CATEGORIES)
    keep = outlier_filter(distances, result.labels, 0.2)
    assert not keep[far].any()
    assert (~keep).sum() == NUM_CATEGORIES * 8


def test_knn_graph_and_spectral_embedding_match_sklearn():
    manifold = pytest.importorskip("sklearn.manifold")
    neighbors = pytest.importorskip("sklearn.neighbors")
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    graph = knn_connectivity(x, 30)
    theirs = neighbors.kneighbors_graph(x, 30, include_self=True)
    assert abs(graph - 0.5 * (theirs + theirs.T)).max() == 0
    ours = spectral_embedding(graph, 5, seed=0)
    reference = manifold.spectral_embedding(
        graph, n_components=5, drop_first=False, eigen_solver="arpack", random_state=0
    )
    # Equal up to each vector's sign; both fix it the same way (largest |entry| positive).
    np.testing.assert_allclose(np.abs(ours), np.abs(reference), atol=1e-8)
    np.testing.assert_allclose(ours, reference, atol=1e-8)


def test_spectral_embedding_by_lanczos_matches_sklearn():
    """Above 2,000 nodes the embedding comes from ARPACK instead of a dense eigh."""
    manifold = pytest.importorskip("sklearn.manifold")
    x = np.random.default_rng(3).standard_normal((2100, 4)).astype(np.float32)
    graph = knn_connectivity(x, 10)
    ours = spectral_embedding(graph, 4, seed=0)
    reference = manifold.spectral_embedding(
        graph, n_components=4, drop_first=False, eigen_solver="arpack", random_state=0
    )
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_spectral_labels_match_sklearn_spectral_clustering():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    rng = np.random.default_rng(4)
    centres = rng.standard_normal((4, 8))
    truth = np.repeat(np.arange(4), 100)
    # Overlapping blobs (one connected graph; 0.87 ARI to the truth): a non-trivial agreement.
    x = (centres[truth] + rng.standard_normal((400, 8))).astype(np.float32)
    reference = sklearn_cluster.SpectralClustering(
        4, affinity="nearest_neighbors", n_neighbors=30, n_init=10, random_state=0
    ).fit(x)
    ours = cluster(x, "spectral", 4, seed=0).labels
    assert adjusted_rand_index(contingency(ours, reference.labels_)) == 1.0


def test_nmi_and_ari_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    for size, k, c in ((200, 5, 4), (50, 2, 7), (1000, 20, 20)):
        a, b = rng.integers(0, k, size), rng.integers(0, c, size)
        table = contingency(a, b)
        assert normalized_mutual_info(table) == pytest.approx(
            metrics.normalized_mutual_info_score(b, a), abs=1e-12
        )
        assert adjusted_rand_index(table) == pytest.approx(
            metrics.adjusted_rand_score(b, a), abs=1e-12
        )
    one = np.zeros(10, int)
    for a, b in ((one, one), (one, np.arange(10)), (np.arange(10), np.arange(10))):
        table = contingency(a, b)
        assert normalized_mutual_info(table) == pytest.approx(
            metrics.normalized_mutual_info_score(b, a)
        )
        assert adjusted_rand_index(table) == pytest.approx(metrics.adjusted_rand_score(b, a))


def test_bad_cluster_counts_and_duplicate_points():
    points = np.repeat(np.eye(2, dtype=np.float32), 5, axis=0)  # 2 distinct points, 10 rows
    with pytest.raises(ValueError, match="11 clusters asked for, but there are only 10 masks"):
        cluster(points, "kmeans", 11, seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        cluster(np.full((4, 2), np.nan), "kmeans", 2, seed=0)
    # Fewer distinct points than clusters: k-means leaves the extra clusters empty.
    assert cluster(points, "kmeans", 4, seed=0).cluster_sizes.tolist() == [5, 5, 0, 0]
    # COMUS's graph of 10 points is complete, its embedding degenerate: any split, but defined.
    labels = cluster(points, "spectral", 4, seed=0).labels
    assert labels.shape == (10,) and 0 <= labels.min() and labels.max() < 4


def test_region_inputs_box_crop_and_masked_image():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:10, 8:20] = 1
    from uis_d2.utils.masks import mask_to_rle

    annotation = {"bbox": [8.0, 5.0, 12.0, 5.0], "segmentation": mask_to_rle(mask)}
    crop = region_inputs(image, [annotation], "box_crop", 0)[0]
    torch.testing.assert_close(crop, torch.from_numpy(image[5:10, 8:20].transpose(2, 0, 1)).float())
    assert region_inputs(image, [annotation], "box_crop", 16)[0].shape == (3, 16, 16)
    masked = region_inputs(image, [annotation], "masked_image", 0)[0]
    assert masked.shape == (3, 20, 30)
    torch.testing.assert_close(masked[:, 5:10, 8:20], crop)
    np.testing.assert_allclose(masked[:, 0, 0].numpy(), MASKED_FILL, rtol=1e-6)
    assert box_bounds([29.6, -1.0, 0.0, 0.2], 20, 30) == (0, 1, 29, 30)  # clipped, >= 1 px


@pytest.mark.parametrize("method", ["kmeans", "spectral"])
def test_assignment_names_new_points_as_the_fit_named_their_blob(method):
    points, truth = planted_blobs(per_cluster=60)
    fitted = cluster(points[:300], method, NUM_CATEGORIES, seed=0)
    name_of_blob = {t: label for t, label in zip(truth[:300], fitted.labels)}
    labels, distances = assign_to_clusters(
        points[:300], fitted.labels, points[300:], method, NUM_CATEGORIES
    )
    assert labels.tolist() == [name_of_blob[t] for t in truth[300:]]
    assert ((distances >= 0) & (distances < 0.1)).all()  # near their own centre
    # The fitted points themselves keep their labels, and a point is named the same alone or
    # in a batch: whitening uses the reference's statistics, never the new points'.
    own, _ = assign_to_clusters(points[:300], fitted.labels, points[:300], method, NUM_CATEGORIES)
    np.testing.assert_array_equal(own, fitted.labels)
    alone, _ = assign_to_clusters(
        points[:300], fitted.labels, points[300:301], method, NUM_CATEGORIES
    )
    assert alone[0] == labels[0]


def test_spectral_assignment_is_a_neighbour_vote_with_nearer_ties():
    reference = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    labels = np.array([0, 0, 0, 1, 1])
    new = np.array([[9.0], [5.0]])
    voted, _ = assign_to_clusters(reference, labels, new, "spectral", 2, n_neighbors=3)
    assert voted.tolist() == [1, 0]  # 9: {10, 11, 2} -> 1; 5: {2, 1, 0} -> 0
    tie, _ = assign_to_clusters(
        np.array([[0.0], [10.0]]), np.array([0, 1]), np.array([[4.0], [6.0]]), "spectral", 2, 2
    )
    assert tie.tolist() == [0, 1]  # one vote each: the nearer neighbour's label


def test_kmeans_assignment_skips_empty_clusters_and_checks_widths():
    reference = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels, _ = assign_to_clusters(reference, np.array([0, 0, 2]), reference, "kmeans", 3)
    assert 1 not in labels.tolist()
    with pytest.raises(ValueError, match="width"):
        assign_to_clusters(reference, np.array([0, 0, 2]), np.ones((2, 3)), "kmeans", 3)


# ---- the tool end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Synthetic scenes and a pseudo-label json made of their ground-truth masks (class-agnostic,
    with scores and a planted stored embedding: the category's one-hot plus noise), one image
    without masks; the embeddings in a store, as the project's writers keep them."""
    root = tmp_path_factory.mktemp("scenes")
    paths = generate_synthetic_dataset(root / "synthetic", num_train=8, num_val=0, seed=0)
    gt = json.loads(Path(paths["train_json"]).read_text())
    rng = np.random.default_rng(0)
    annotations = [dict(a) for a in gt["annotations"] if a["image_id"] != gt["images"][-1]["id"]]
    onehot = np.eye(NUM_CATEGORIES, dtype=np.float32)
    rows = np.stack([onehot[a["category_id"] - 1] for a in annotations])
    rows += 0.05 * rng.standard_normal(rows.shape).astype(np.float32)
    for annotation in annotations:
        annotation.update(category_id=1, score=float(rng.uniform(0.5, 1.0)))
    pseudo = root / "pseudo.json"
    store = EmbeddingStoreWriter(pseudo)
    store.add(annotations, rows)
    coco = {
        "info": {"embedding_store": store.finish(), "image_root": paths["train_images"].as_posix()},
        "images": gt["images"],
        "categories": [{"id": 1, "name": "object"}],
        "annotations": annotations,
    }
    pseudo.write_text(json.dumps(coco))
    return {
        "pseudo": pseudo,
        "gt": Path(paths["train_json"]),
        "images": Path(paths["train_images"]),
        "num_masks": len(annotations),
        "empty_image": gt["images"][-1]["id"],
    }


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/cluster_pseudo_classes.py")


def test_tool_stored_kmeans_with_gt(scenes, tool, tmp_path, capsys):
    out = tmp_path / "classes.json"
    argv = ["--pseudo-labels", str(scenes["pseudo"]), "--output", str(out), "--method", "kmeans"]
    argv += ["--num-clusters", "6", "--embedding", "stored", "--gt", str(scenes["gt"])]
    assert tool.main(argv) == 0
    result = json.loads(out.read_text())
    assert [c["name"] for c in result["categories"]] == [f"cluster_{i}" for i in range(6)]
    assert [c["id"] for c in result["categories"]] == list(range(1, 7))
    assert len(result["annotations"]) == scenes["num_masks"]  # kmeans filters nothing
    assert {a["category_id"] for a in result["annotations"]} == set(range(1, 7))
    assert all(0 <= a["cluster_distance"] <= 2 for a in result["annotations"])
    info = result["info"]["pseudo_classes"]
    assert info["method"] == "kmeans" and info["filter_share"] == 0.0
    assert info["dropped_annotations"] == [] and info["dropped_images"] == []
    # The image without masks stays; the store travels with the file and still reads.
    assert scenes["empty_image"] in {image["id"] for image in result["images"]}
    assert embedding_store_path(out).is_file()
    lookup = EmbeddingLookup.for_file(out).embeddings(result["annotations"])
    assert lookup.shape == (scenes["num_masks"], NUM_CATEGORIES)
    report = validate_coco_json(out, scenes["images"], kind="pseudo")
    assert report.ok, report.details()
    metrics = json.loads(out.with_name("classes.metrics.json").read_text())
    for part in ("all", "kept"):
        assert metrics[part]["accuracy"] == 1.0  # the planted embeddings name the categories
        assert metrics[part]["nmi"] == pytest.approx(1.0)
        assert metrics[part]["ari"] == 1.0
    assert metrics["masks_without_class"] == 0
    assert "accuracy" in capsys.readouterr().out


def test_tool_box_crop_spectral_on_patch_stats(scenes, tool, tmp_path, monkeypatch):
    out = tmp_path / "classes.json"
    argv = ["--pseudo-labels", str(scenes["pseudo"]), "--output", str(out)]
    argv += ["--method", "spectral", "--num-clusters", "6", "--images", str(scenes["images"])]
    argv += ["--config-file", str(REPO / "configs/proposals/synthetic.yaml")]
    argv += ["--crop-size", "32", "--gt", str(scenes["gt"]), "--gt-match", "box"]
    argv += ["MODEL.DEVICE", "cpu", "PROPOSALS.NUM_WORKERS", "0"]
    assert tool.main(argv) == 0
    result = json.loads(out.read_text())
    info = result["info"]["pseudo_classes"]
    assert info["embedding"] == "box_crop" and info["crop_size"] == 32
    assert info["extractor"]["name"] == "PatchStats"
    sizes = np.array(info["cluster_sizes"])
    dropped = np.floor(0.2 * sizes + 1e-9).sum()
    assert len(info["dropped_annotations"]) == dropped
    assert len(result["annotations"]) == scenes["num_masks"] - dropped
    kept_ids = {a["id"] for a in result["annotations"]}
    assert kept_ids.isdisjoint(info["dropped_annotations"])
    images = {image["id"] for image in result["images"]}
    assert images.isdisjoint(d["id"] for d in info["dropped_images"])
    assert {a["image_id"] for a in result["annotations"]} <= images
    # The kept masks' embeddings, renumbered in the output's own store.
    stored = EmbeddingLookup.for_file(scenes["pseudo"]).embeddings(
        [a for a in json.loads(scenes["pseudo"].read_text())["annotations"] if a["id"] in kept_ids]
    )
    np.testing.assert_array_equal(
        EmbeddingLookup.for_file(out).embeddings(result["annotations"]), stored
    )
    report = validate_coco_json(out, scenes["images"], kind="pseudo")
    assert report.ok, report.details()
    metrics = json.loads(out.with_name("classes.metrics.json").read_text())
    assert metrics["gt_match"] == "box"
    assert metrics["all"]["masks_with_class"] == scenes["num_masks"]
    assert 0 <= metrics["kept"]["accuracy"] <= 1 and -1 <= metrics["kept"]["ari"] <= 1
    # A rerun with other clustering settings reads the cached embeddings.
    assert cache_path(out).is_file()

    def fail(*args, **kwargs):
        raise AssertionError("embedded again despite the cache")

    monkeypatch.setattr(tool, "image_embeddings", fail)
    argv[argv.index("spectral")] = "kmeans"
    assert tool.main(argv) == 0


def test_tool_masked_image_runs_and_assigns(scenes, tool, tmp_path, capsys):
    out = tmp_path / "classes.json"
    argv = ["--pseudo-labels", str(scenes["pseudo"]), "--output", str(out), "--method", "kmeans"]
    argv += ["--num-clusters", "3", "--embedding", "masked_image"]  # images: info.image_root
    argv += ["--config-file", str(REPO / "configs/proposals/synthetic.yaml")]
    argv += ["--crop-size", "64", "MODEL.DEVICE", "cpu", "PROPOSALS.NUM_WORKERS", "0"]
    assert tool.main(argv) == 0
    result = json.loads(out.read_text())
    assert len(result["annotations"]) == scenes["num_masks"]
    assert np.load(cache_path(out))["embeddings"].shape[0] == scenes["num_masks"]
    # The same masks assigned to this clustering (the extractor config comes from the file).
    assigned = tmp_path / "assigned.json"
    argv = ["--pseudo-labels", str(scenes["pseudo"]), "--output", str(assigned)]
    argv += ["--assign-to", str(out), "MODEL.DEVICE", "cpu", "PROPOSALS.NUM_WORKERS", "0"]
    assert tool.main(argv) == 0
    labels = [a["category_id"] for a in json.loads(assigned.read_text())["annotations"]]
    assert labels == [a["category_id"] for a in result["annotations"]]
    cache_path(out).unlink()
    assigned.unlink()
    assert tool.main(argv) == 1
    assert "embeddings of" in capsys.readouterr().err


def test_tool_bad_input(scenes, tool, tmp_path, capsys):
    out = tmp_path / "classes.json"
    base = ["--pseudo-labels", str(scenes["pseudo"]), "--output", str(out)]
    base += ["--method", "kmeans", "--embedding", "stored"]
    count = scenes["num_masks"]
    assert tool.main([*base, "--num-clusters", str(count + 1)]) == 1
    error = capsys.readouterr().err
    assert f"--num-clusters {count + 1}" in error and f"masks, {count}," in error
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    assert tool.main([*base[2:], "--pseudo-labels", str(empty), "--num-clusters", "2"]) == 1
    assert str(empty) in capsys.readouterr().err
    no_store = tmp_path / "no_emb.json"
    coco = json.loads(scenes["pseudo"].read_text())
    for annotation in coco["annotations"]:
        annotation.pop("emb_row")
    del coco["info"]["image_root"]
    no_store.write_text(json.dumps(coco))
    assert tool.main([*base[2:], "--pseudo-labels", str(no_store), "--num-clusters", "2"]) == 1
    assert "no stored embedding" in capsys.readouterr().err
    config = ["--config-file", str(REPO / "configs/proposals/synthetic.yaml")]
    argv = [*base[2:-2], "--pseudo-labels", str(no_store), "--num-clusters", "2", *config]
    assert tool.main(argv) == 1
    assert "give --images" in capsys.readouterr().err


def test_tool_empty_clusters_are_kept_and_warned(scenes, tool, tmp_path, caplog):
    coco = json.loads(scenes["pseudo"].read_text())
    for annotation in coco["annotations"]:  # two distinct embeddings for all masks
        annotation.pop("emb_row")
        annotation["emb"] = [float(annotation["id"] % 2), 1.0]
    source = tmp_path / "two.json"
    source.write_text(json.dumps(coco))
    out = tmp_path / "classes.json"
    embedding_store_path(out).write_bytes(b"stale")  # removed: the output names no rows
    argv = ["--pseudo-labels", str(source), "--output", str(out), "--method", "kmeans"]
    assert tool.main([*argv, "--num-clusters", "4", "--embedding", "stored"]) == 0
    result = json.loads(out.read_text())
    assert len(result["categories"]) == 4
    assert result["info"]["pseudo_classes"]["empty_clusters"] == [2, 3]
    assert "2 of 4 clusters are empty (cluster_2, cluster_3)" in caplog.text
    assert not embedding_store_path(out).exists()


def test_embedding_cache_is_keyed(tmp_path):
    ids = np.arange(3)
    cache = embeddings_module.EmbeddingCache(tmp_path / "x.region_emb.npz", {"a": 1})
    cache.save(ids, np.ones((3, 2), np.float32))
    assert cache.load(ids).shape == (3, 2)
    assert cache.load(np.arange(4)) is None
    assert embeddings_module.EmbeddingCache(cache.path, {"a": 2}).load(ids) is None


def test_tool_assigns_other_masks_to_fitted_pseudo_classes(scenes, tool, tmp_path, capsys):
    fitted = tmp_path / "classes.json"
    argv = ["--pseudo-labels", str(scenes["pseudo"]), "--output", str(fitted), "--method"]
    assert tool.main([*argv, "kmeans", "--num-clusters", "6", "--embedding", "stored"]) == 0
    assigned = tmp_path / "assigned.json"
    argv = ["--pseudo-labels", str(scenes["pseudo"]), "--output", str(assigned)]
    argv += ["--assign-to", str(fitted), "--gt", str(scenes["gt"])]
    assert tool.main(argv) == 0  # method, K and the embedding come from the fitted file
    result, reference = json.loads(assigned.read_text()), json.loads(fitted.read_text())
    assert [a["category_id"] for a in result["annotations"]] == [
        a["category_id"] for a in reference["annotations"]
    ]
    info = result["info"]["pseudo_classes"]
    assert info["assigned_to"] == str(fitted) and info["method"] == "kmeans"
    assert info["num_clusters"] == 6 and info["dropped_annotations"] == []
    assert (
        json.loads(assigned.with_name("assigned.metrics.json").read_text())["all"]["accuracy"]
        == 1.0
    )
    capsys.readouterr()
    with pytest.raises(SystemExit):
        tool.main([*argv, "--method", "spectral"])
    assert "--method spectral differs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main([*argv[:-4], "--assign-to", str(scenes["pseudo"])])
    assert "no info.pseudo_classes" in capsys.readouterr().err
    coco = json.loads(scenes["pseudo"].read_text())
    for annotation in coco["annotations"]:
        annotation.pop("emb_row")
        annotation["emb"] = [1.0, 2.0]
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps(coco))
    assert tool.main(["--pseudo-labels", str(narrow), *argv[2:]]) == 1
    assert "width" in capsys.readouterr().err
