"""Community detection over part clusters (uis_d2/leopart/community.py) on constructed
co-occurrence cases: hand-counted label pairs, the symmetric edge rule, planted communities."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from uis_d2.leopart import community as cd


def test_cooccurrence_counts_all_ordered_neighbours_of_a_2x2_map():
    # Every pixel of a 2 x 2 map is a distance-1 neighbour of every other one (8 directions):
    # 12 ordered pairs; the two 0s face each other across the diagonal.
    label_map = np.array([[0, 1], [2, 0]])
    expected = np.array(
        [
            [2, 2, 2],  # 0 -> 0 twice (diagonal), 0 -> 1 and 0 -> 2 from both 0s
            [2, 0, 1],  # 1 -> both 0s, 1 -> 2 across the anti-diagonal
            [2, 1, 0],
        ]
    )
    np.testing.assert_array_equal(cd.cooccurrence_counts(label_map, 3), expected)
    np.testing.assert_array_equal(cd.cooccurrence_counts(label_map, 3, distances=(2,)), 0)


def test_cooccurrence_counts_distance_two_along_a_row_and_a_diagonal():
    row = np.array([[0, 1, 2]])
    np.testing.assert_array_equal(
        cd.cooccurrence_counts(row, 3, distances=(1,)), [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    )
    np.testing.assert_array_equal(
        cd.cooccurrence_counts(row, 3, distances=(2,)), [[0, 0, 1], [0, 0, 0], [1, 0, 0]]
    )
    # At distance 2 the diagonal neighbour is 2 pixels away on both axes (not skimage's
    # rounded (1, 1)): the corners of a 3 x 3 map pair up, the centre pairs with nothing.
    corners = np.zeros((3, 3), dtype=np.int64)
    corners[0, 0], corners[2, 2], corners[1, 1] = 1, 2, 3
    counts = cd.cooccurrence_counts(corners, 4, distances=(2,))
    assert counts[1, 2] == counts[2, 1] == 1
    assert counts[3].sum() == counts[:, 3].sum() == 0
    assert counts.sum() == 4 * 3 + 4 * 1  # per axis direction 3 pairs, per diagonal 1


def test_conditional_cooccurrence_divides_by_the_images_where_a_label_occurs():
    maps = [
        np.array([[0, 1]]),  # P(1 | 0) = 1, P(0 | 1) = 1
        np.array([[0, 2, 2]]),  # 0 -> 2 at distances 1 and 2; 2 -> 2 is on the diagonal
        np.array([[0, 0]]),  # 0 occurs without another label: its row is 0 here
    ]
    probabilities = cd.conditional_cooccurrence(maps, 4)
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[0, 2] = 1 / 3  # 0 occurs in 3 images
    expected[1, 0] = expected[2, 0] = 1.0
    np.testing.assert_allclose(probabilities, expected)


def test_symmetric_threshold_keeps_exactly_the_mutual_edges():
    p = np.zeros((4, 4))
    p[0, 1], p[1, 0] = 0.5, 0.2  # kept, weight 0.2
    p[0, 2], p[2, 0] = 0.5, 0.05  # one way only: dropped
    p[2, 3], p[3, 2] = 0.1, 0.1  # exactly at the threshold: kept
    p[1, 3], p[3, 1] = 0.09, 0.3  # dropped
    assert cd.cooccurrence_edges(p, 0.1) == [(0, 1, 0.2), (2, 3, 0.1)]


def _cliques(sizes: tuple[int, ...], bridge: float, ring: bool = False):
    """Edges of cliques of weight 1, consecutive ones joined by one ``bridge`` edge."""
    edges = []
    starts = list(itertools.accumulate((0, *sizes)))[:-1]
    for size, start in zip(sizes, starts):
        edges += [(i, j, 1.0) for i, j in itertools.combinations(range(start, start + size), 2)]
    links = len(sizes) if ring else len(sizes) - 1
    for c in range(links):
        nxt = starts[(c + 1) % len(sizes)]
        edges.append((starts[c] + sizes[c] - 1, nxt, bridge))
    return edges


def test_fallback_detector_finds_two_planted_communities():
    edges = _cliques((5, 5), bridge=0.05)
    found, detector = cd.detect_communities(edges, markov_time=1.0, detector="louvain")
    assert detector == "louvain"
    assert sorted(map(sorted, found)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    again, _ = cd.detect_communities(edges, markov_time=1.0, detector="louvain")
    assert again == found


def test_fallback_markov_time_merges_communities_as_it_grows():
    """Resolution 1 / t: a ring of 6 cliques stays 6 communities at t = 1 and pairs up at 8."""
    edges = _cliques((4,) * 6, bridge=0.3, ring=True)
    assert len(cd.detect_communities(edges, 1.0, detector="louvain")[0]) == 6
    assert len(cd.detect_communities(edges, 8.0, detector="louvain")[0]) == 3


def test_infomap_finds_two_planted_communities():
    pytest.importorskip("infomap")
    edges = _cliques((5, 5), bridge=0.05)
    found, detector = cd.detect_communities(edges, 1.0, preferred_modules=2, detector="auto")
    assert detector == "infomap"
    assert sorted(map(sorted, found)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_detector_options_are_checked():
    with pytest.raises(ValueError, match="must be one of"):
        cd.detect_communities([(0, 1, 1.0)], detector="leiden")
    with pytest.raises(ValueError, match="Markov time"):
        cd.detect_communities([(0, 1, 1.0)], markov_time=0.0)
    if not cd.infomap_available():
        with pytest.raises(ValueError, match="pip install infomap"):
            cd.detect_communities([(0, 1, 1.0)], detector="infomap")
    assert cd.detect_communities([], detector="louvain") == ([], "louvain")


def test_community_ids_number_communities_and_leave_the_rest_at_zero():
    ids = cd.community_ids([{5, 3}, {1, 0}], 7)
    np.testing.assert_array_equal(ids, [1, 1, 0, 2, 0, 2, 0])


def test_cluster_foreground_gives_background_its_own_id():
    rng = np.random.default_rng(0)
    foreground = np.zeros((2, 4, 4), dtype=bool)
    foreground[:, 1:3, 1:3] = True
    points = rng.normal(size=(foreground.size, 3))
    labels = cd.cluster_foreground(points, foreground, 3, seed=0)
    assert (labels[~foreground] == 3).all()
    assert set(np.unique(labels[foreground])) == {0, 1, 2}
    with pytest.raises(ValueError, match="k_cd = 9 clusters but only 8 foreground tokens"):
        cd.cluster_foreground(points, foreground, 9)


def test_unmatched_ids_count_as_background():
    # Ids: a background piece, the object, and a second background piece Hungarian cannot
    # match (2 classes). As errors it costs background IoU 0.2; as background it costs none.
    confusion = np.array([[8, 0], [0, 5], [2, 0]])
    scores = cd.scores_unmatched_to_background(confusion)
    np.testing.assert_allclose(scores.per_class_iou, [1.0, 1.0])
    assert scores.miou == pytest.approx(1.0)
