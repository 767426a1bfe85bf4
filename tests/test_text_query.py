"""Ranking from a text alone: anchors, collaborative terms, stand-ins for new items."""

from __future__ import annotations

import numpy as np
import pytest

from driftrank.data import make_drifting
from driftrank.engine._text_query import ANCHORS, RRF_K, _rrf_term, text_query_terms
from driftrank.retrieval import ALSChannel, CovisitChannel


@pytest.fixture(scope="module")
def channels() -> tuple[object, CovisitChannel, ALSChannel]:
    data = make_drifting(n_users=60, n_items=50, n_topics=3, events_per_user=(8, 12), seed=2)
    return data, CovisitChannel().fit(data), ALSChannel().fit(data)


def test_rrf_term_by_rank_and_only_where_valid() -> None:
    score = np.array([0.2, 0.9, -1.0, 0.5])
    np.testing.assert_allclose(
        _rrf_term(score, 2.0), 2.0 / (RRF_K + np.array([3.0, 1.0, 4.0, 2.0])), rtol=1e-12
    )
    valid = np.array([True, False, True, True])
    np.testing.assert_allclose(
        _rrf_term(score, 1.0, valid), [1 / (RRF_K + 2), 0.0, 1 / (RRF_K + 3), 1 / (RRF_K + 1)], rtol=1e-12
    )
    assert not _rrf_term(score, 0.0).any()


def test_terms_use_the_text_anchors_collaborative_neighbours(channels: tuple) -> None:
    data, covisit, als = channels
    n = data.n_items
    rng = np.random.default_rng(0)
    sims = rng.uniform(-0.2, 0.6, n)
    pop = np.bincount(data.item_index, minlength=n).astype(np.float64)
    terms = text_query_terms(sims, pop, covisit, als, 0.5)
    assert set(terms) == {"text", "covisit", "als", "popularity"}
    anchors = np.argsort(-sims, kind="stable")[:ANCHORS]
    # The co-visitation term follows the anchors' co-visitation sums, not the text.
    w = np.exp((sims[anchors] - sims[anchors].max()) / 0.02)
    cov = covisit.item_scores(anchors, w / w.sum())
    top_cov = int(np.argmax(cov))
    assert terms["covisit"][top_cov] == pytest.approx(1.0 / (RRF_K + 1))
    assert (terms["covisit"][cov <= 0] == 0).all()
    # ALS: the fold-in of the anchors ranks every fitted item.
    s = als.item_vectors @ als.fold_in(anchors)
    assert terms["als"][int(np.argmax(s))] == pytest.approx(1.0 / (RRF_K + 1))
    assert terms["popularity"].max() == pytest.approx(0.5 / (RRF_K + 1))
    # Without channels: the text and popularity only.
    assert set(text_query_terms(sims, pop, None, None, 0.5)) == {"text", "popularity"}


def test_a_new_item_among_the_anchors_stands_in_with_its_text_rank(channels: tuple) -> None:
    data = channels[0]
    covisit, als = CovisitChannel().fit(data), ALSChannel().fit(data)  # grown below: not shared
    n = data.n_items
    covisit.extend_items(2)
    als.extend_items(2)
    sims = np.linspace(0.5, 0.0, n + 2)
    sims[n] = 0.99  # a new item exactly like the text
    sims[n + 1] = 0.40  # a new item loosely like it, not among the anchors
    pop = np.concatenate([np.bincount(data.item_index, minlength=n), [0, 0]]).astype(np.float64)
    terms = text_query_terms(sims, pop, covisit, als, 0.5)
    score = sum(terms.values())
    assert int(np.argmax(score)) == n  # the exact match leads
    for name, weight in (("covisit", 1.0), ("als", 1.0), ("popularity", 0.5)):
        assert terms[name][n] == pytest.approx(weight / (RRF_K + 1))
        assert terms[name][n + 1] == 0.0  # no stand-in outside the anchors


def test_covisit_item_scores_are_the_anchor_rows_weighted(channels: tuple) -> None:
    from driftrank.errors import DataError

    covisit = channels[1]
    m = covisit._matrix().toarray()
    items, weights = np.array([3, 7, 3]), np.array([0.5, 0.25, 0.25])
    want = sum(w * m[i] / m[i].sum() for i, w in zip(items, weights, strict=True) if m[i].sum() > 0)
    want = want / np.maximum(covisit._count, 1.0) ** covisit.config.popularity_power
    np.testing.assert_allclose(covisit.item_scores(items, weights), want, rtol=1e-10, atol=1e-12)
    with pytest.raises(DataError, match="item indices"):
        covisit.item_scores(np.array([10_000]), np.array([1.0]))
    with pytest.raises(DataError, match="one length"):
        covisit.item_scores(np.array([1, 2]), np.array([1.0]))
