"""Conformance checks every retrieval channel must pass.

Each ``check_*`` function takes ``make`` (a callable returning a fresh, unfitted channel; the
same call must give the same model, i.e. seeds are fixed inside) and a small
:class:`~driftrank.data.Dataset`, and raises ``AssertionError`` with a message when the
channel breaks the contract. :data:`CHANNEL_CHECKS` lists them all so a test can parametrise
over channels x checks::

    @pytest.mark.parametrize("check", CHANNEL_CHECKS, ids=lambda c: c.__name__)
    def test_als(check, small_drifting):
        check(lambda: ALSChannel(ALSConfig(factors=8)), small_drifting)

The factor-model checks (:data:`FACTOR_CHECKS`) need ``fold_in``/``user_vectors``.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from driftrank.data import Dataset
from driftrank.types import CandidateGenerator, Ranker, Ranking

__all__ = [
    "CHANNEL_CHECKS",
    "FACTOR_CHECKS",
    "check_batch_equals_single",
    "check_empty_history",
    "check_extend_items",
    "check_fold_in_matches_trained",
    "check_fold_in_ranks_like_trained",
    "check_inputs_not_mutated",
    "check_new_user_via_observe",
    "check_observe_reflects_events",
    "check_online_equals_fold_in",
    "check_protocols",
    "check_same_seed_same_result",
    "check_seen_excluded",
    "check_state_roundtrip",
    "roundtrip_state",
]

Make = Callable[[], Any]


def _users(dataset: Dataset, k: int = 8) -> np.ndarray:
    """A few training users with the longest histories, plus the first ones (asymmetric picks)."""
    lengths = dataset.sequences.lengths()
    longest = np.argsort(-lengths, kind="stable")[: k // 2]
    return np.unique(np.concatenate([longest, np.arange(min(k // 2, dataset.n_users))])).astype(np.int64)


def _assert_valid(r: Ranking, n_rows: int, n: int, n_items: int, what: str) -> None:
    assert isinstance(r, Ranking), f"{what}: expected a Ranking, got {type(r).__name__}"
    assert r.items.shape == (n_rows, n), f"{what}: shape {r.items.shape}, expected {(n_rows, n)}"
    assert r.items.dtype == np.int64, f"{what}: items dtype {r.items.dtype}, expected int64"
    assert r.scores.dtype == np.float32, f"{what}: scores dtype {r.scores.dtype}, expected float32"
    pad = r.items < 0
    assert np.all(r.items[~pad] < n_items), f"{what}: item index beyond the catalog of {n_items}"
    assert np.all(np.isnan(r.scores[pad])), f"{what}: padding must carry NaN scores"
    assert np.all(np.isfinite(r.scores[~pad])), f"{what}: returned items must carry finite scores"
    for row, p in zip(r.items, pad, strict=True):
        # Padding only at the end, no duplicate within a row, scores never increasing.
        assert not np.any(np.diff(p.astype(int)) < 0), f"{what}: -1 padding in the middle of a row"
        valid = row[~p]
        assert len(np.unique(valid)) == len(valid), f"{what}: duplicate items in a row"
    ok = ~pad
    for s, o in zip(r.scores, ok, strict=True):
        v = s[o]
        assert np.all(np.diff(v) <= 1e-6 * np.maximum(1.0, np.abs(v[:-1]))), f"{what}: scores not sorted"


def roundtrip_state(channel: Any) -> Any:
    """Save ``channel`` the way the engine does (JSON config + ``.npz`` without pickle) and load it."""
    config, arrays = channel.get_state()
    text = json.dumps(config)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}
    return type(channel).from_state(json.loads(text), loaded)


# ---------------------------------------------------------------------- every channel
def check_protocols(make: Make, dataset: Dataset) -> None:
    """Implements CandidateGenerator and Ranker; ``rank`` equals ``candidates`` with n = k."""
    ch = make().fit(dataset)
    assert isinstance(ch, CandidateGenerator), "not a CandidateGenerator"
    assert isinstance(ch, Ranker), "not a Ranker"
    assert isinstance(ch.name, str) and ch.name, "a channel needs a non-empty name"
    users = _users(dataset)
    c = ch.candidates(users, 7, exclude=dataset.seen)
    r = ch.rank(users, 7, exclude=dataset.seen)
    _assert_valid(c, len(users), 7, dataset.n_items, "candidates")
    np.testing.assert_array_equal(c.items, r.items, err_msg="rank and candidates disagree")
    assert ch.candidates(np.zeros(0, np.int64), 5).items.shape == (0, 5), "empty batch must give [0, n]"


def check_seen_excluded(make: Make, dataset: Dataset) -> None:
    """Items in ``exclude`` (a CSR, or ``"seen"``) never come back; without it they may."""
    ch = make().fit(dataset)
    users = _users(dataset)
    seen = dataset.seen
    for exclude in (seen, "seen"):
        r = ch.candidates(users, dataset.n_items, exclude=exclude)
        _assert_valid(r, len(users), dataset.n_items, dataset.n_items, f"exclude={type(exclude).__name__}")
        for j, u in enumerate(users):
            got = set(r.items[j][r.items[j] >= 0].tolist())
            bad = got & set(seen[u].indices.tolist())
            assert not bad, f"user {u}: seen items {sorted(bad)[:5]} returned with exclude={exclude!r}"
    # A partial exclusion leaves the rest alone.
    u = int(users[0])
    full = ch.candidates(np.array([u]), 10)
    top = full.items[0][full.items[0] >= 0]
    if len(top) >= 2:
        import scipy.sparse as sp

        ex = sp.csr_matrix(
            (np.ones(1, np.float32), ([u], [int(top[0])])), shape=(dataset.n_users, dataset.n_items)
        )
        r = ch.candidates(np.array([u]), 10, exclude=ex)
        assert int(top[0]) not in r.items[0], "excluded item returned"
        assert r.items[0][0] == top[1], "excluding the top item must promote the second"


def check_batch_equals_single(make: Make, dataset: Dataset) -> None:
    """A batch gives each user what a one-user call gives, whatever the batch order."""
    ch = make().fit(dataset)
    users = _users(dataset)[::-1].copy()
    batch = ch.candidates(users, 15, exclude=dataset.seen)
    for j, u in enumerate(users):
        one = ch.candidates(np.array([u]), 15, exclude=dataset.seen)
        np.testing.assert_array_equal(batch.items[j], one.items[0], err_msg=f"user {u}: batch != single")
        np.testing.assert_allclose(batch.scores[j], one.scores[0], rtol=1e-5, atol=1e-6)


def check_same_seed_same_result(make: Make, dataset: Dataset) -> None:
    """Two channels built and fitted the same way give identical candidates."""
    users = _users(dataset)
    a = make().fit(dataset).candidates(users, 20, exclude=dataset.seen)
    b = make().fit(dataset).candidates(users, 20, exclude=dataset.seen)
    np.testing.assert_array_equal(a.items, b.items, err_msg="same seed, different items")
    np.testing.assert_array_equal(a.scores, b.scores, err_msg="same seed, different scores")


def check_state_roundtrip(make: Make, dataset: Dataset) -> None:
    """``from_state(get_state())`` (through JSON + npz) serves identical candidates, also after
    online events, and keeps taking events the same way."""
    ch = make().fit(dataset)
    new_user = dataset.n_users + 2
    ch.observe(np.array([0, new_user]), np.array([1, 2]), np.array([2e9, 2e9]))
    loaded = roundtrip_state(ch)
    users = np.concatenate([_users(dataset), [new_user, new_user + 5]])
    for exclude in (dataset.seen, "seen"):
        a = ch.candidates(users, 20, exclude=exclude)
        b = loaded.candidates(users, 20, exclude=exclude)
        np.testing.assert_array_equal(a.items, b.items, err_msg="loaded channel serves other items")
        np.testing.assert_array_equal(a.scores, b.scores, err_msg="loaded channel serves other scores")
    more = (np.array([new_user, 1]), np.array([3, 4]), np.array([2e9 + 60, 2e9 + 60]))
    ch.observe(*more)
    loaded.observe(*more)
    a = ch.candidates(users, 20, exclude="seen")
    b = loaded.candidates(users, 20, exclude="seen")
    np.testing.assert_array_equal(a.items, b.items, err_msg="after more events the loaded channel diverges")
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def check_empty_history(make: Make, dataset: Dataset) -> None:
    """A user with no events (never observed) gets an empty row or a popularity-like list, never
    an error; the same for an index far beyond the known users."""
    ch = make().fit(dataset)
    users = np.array([dataset.n_users, dataset.n_users + 1000])
    r = ch.candidates(users, 10, exclude=dataset.seen)
    _assert_valid(r, 2, 10, dataset.n_items, "cold user")
    # Both cold users must be treated alike (nothing distinguishes them).
    np.testing.assert_array_equal(r.items[0], r.items[1], err_msg="two cold users got different lists")
    if (r.items[0] >= 0).any():
        pop = np.argsort(-dataset.item_popularity, kind="stable")[:50]
        overlap = len(set(r.items[0][r.items[0] >= 0].tolist()) & set(pop.tolist()))
        assert overlap >= 5, f"a cold user's list should be popularity-like, only {overlap}/10 in the top 50"


def check_new_user_via_observe(make: Make, dataset: Dataset) -> None:
    """A new user index that gets events through ``observe`` is served from them: not empty,
    excluding its own events under ``"seen"``, and close to a training user with that history."""
    ch = make().fit(dataset)
    twin = int(_users(dataset)[0])
    items, times = dataset.sequences.user(twin)
    new = dataset.n_users + 3  # leaves a gap: indices between are simply users without events
    ch.observe(np.full(len(items), new), items.astype(np.int64), times)
    r = ch.candidates(np.array([new, twin]), 10, exclude="seen")
    _assert_valid(r, 2, 10, dataset.n_items, "new user")
    assert (r.items[0] >= 0).sum() > 0, "a new user with events got no candidates"
    assert not set(r.items[0].tolist()) & set(items.tolist()), "observed items returned under exclude='seen'"
    same = len(set(r.items[0].tolist()) & set(r.items[1].tolist()))
    assert same >= 5, (
        f"a new user with a training user's history should get a similar list (overlap {same}/10)"
    )
    assert ch.n_users == new + 1, f"n_users should grow to {new + 1}, is {ch.n_users}"


def check_observe_reflects_events(make: Make, dataset: Dataset) -> None:
    """After ``observe`` the user's candidates change without refitting, and the events are
    part of their history (excluded under ``"seen"``)."""
    ch = make().fit(dataset)
    u = int(_users(dataset)[-1])
    before = ch.candidates(np.array([u]), 20, exclude="seen")
    top = [int(i) for i in before.items[0][:3] if i >= 0]
    t = float(dataset.timestamps.max()) + 3600.0
    # Items from another part of the catalog: the least popular ones the user has not seen.
    seen = set(dataset.seen[u].indices.tolist())
    fresh = [int(i) for i in np.argsort(dataset.item_popularity, kind="stable") if int(i) not in seen][:3]
    new_items = np.array(top[:1] + fresh, dtype=np.int64)
    ch.observe(np.full(len(new_items), u), new_items, t + np.arange(len(new_items), dtype=np.float64))
    hist_items, _ = ch.history(u)
    assert set(new_items.tolist()) <= set(hist_items.tolist()), "observed events missing from the history"
    after = ch.candidates(np.array([u]), 20, exclude="seen")
    assert not set(after.items[0].tolist()) & set(new_items.tolist()), "observed items still returned"
    changed = not np.array_equal(before.scores[0], after.scores[0], equal_nan=True)
    assert changed, "observe did not change the user's candidates"


def check_extend_items(make: Make, dataset: Dataset) -> None:
    """New catalog items never crash anything and get no score without events; exclusion
    matrices of the old width keep working."""
    ch = make().fit(dataset)
    ch.extend_items(3)
    n_old = dataset.n_items
    assert ch.n_items == n_old + 3, f"n_items should be {n_old + 3}, is {ch.n_items}"
    users = _users(dataset)
    r = ch.candidates(users, n_old + 3, exclude=dataset.seen)
    _assert_valid(r, len(users), n_old + 3, n_old + 3, "after extend_items")
    assert not np.any(r.items >= n_old), "items without any signal were returned"
    # Events about a new item: it joins histories (and is excluded as seen) without errors.
    ch.observe(
        np.array([int(users[0])]), np.array([n_old + 1]), np.array([float(dataset.timestamps.max()) + 1])
    )
    r = ch.candidates(users, 10, exclude="seen")
    assert n_old + 1 not in r.items[0], "a seen new item was returned"
    ch.candidates(users, 10, exclude=dataset.seen)


def check_inputs_not_mutated(make: Make, dataset: Dataset) -> None:
    """``candidates``, ``observe`` (and ``fold_in``) leave the caller's arrays untouched."""
    ch = make().fit(dataset)
    users = _users(dataset)
    ex = dataset.seen.copy()
    at = np.full(len(users), float(dataset.timestamps.max()))
    args = (users.copy(), ex.copy(), at.copy())
    ch.candidates(users, 10, exclude=ex, at=at)
    np.testing.assert_array_equal(users, args[0])
    np.testing.assert_array_equal(at, args[2])
    assert (ex != args[1]).nnz == 0, "exclude matrix modified"
    eu = np.array([users[0], dataset.n_users], dtype=np.int64)
    ei = np.array([1, 2], dtype=np.int64)
    et = np.array([2e9, 2e9])
    copies = (eu.copy(), ei.copy(), et.copy())
    ch.observe(eu, ei, et)
    for a, b in zip((eu, ei, et), copies, strict=True):
        np.testing.assert_array_equal(a, b, err_msg="observe modified its input")
    if hasattr(ch, "fold_in"):
        items, times = dataset.sequences.user(int(users[0]))
        it, ts = items.astype(np.int64), times.copy()
        ch.fold_in(it, ts)
        np.testing.assert_array_equal(it, items)
        np.testing.assert_array_equal(ts, times)


CHANNEL_CHECKS: tuple[Callable[[Make, Dataset], None], ...] = (
    check_protocols,
    check_seen_excluded,
    check_batch_equals_single,
    check_same_seed_same_result,
    check_state_roundtrip,
    check_empty_history,
    check_new_user_via_observe,
    check_observe_reflects_events,
    check_extend_items,
    check_inputs_not_mutated,
)


# ---------------------------------------------------------------------- factor models
def check_fold_in_matches_trained(make: Make, dataset: Dataset, rtol: float = 1e-3) -> None:
    """``fold_in`` of a training user's history gives the vector the user is served with.

    For channels whose served vectors are least-squares fits of the history on the trained
    item vectors this holds up to float32 rounding (``rtol``). Use ``rtol`` to loosen it for a
    channel that serves the vectors its training produced (then it measures how far fold-in is
    from training, see the ALS tests)."""
    ch = make().fit(dataset)
    users = _users(dataset)
    trained = ch.user_vectors(users)
    for j, u in enumerate(users):
        items, times = dataset.sequences.user(int(u))
        v = ch.fold_in(items.astype(np.int64), times)
        err = float(np.linalg.norm(v - trained[j])) / max(float(np.linalg.norm(trained[j])), 1e-12)
        assert err <= rtol, f"user {u}: fold-in differs from the trained vector by {err:.2e} (> {rtol:g})"
    # Scores follow the vectors.
    s = ch.candidates(users[:1], 5)
    expect = trained[0] @ ch.item_vectors[s.items[0]].T
    np.testing.assert_allclose(s.scores[0], expect, rtol=1e-4, atol=1e-5)


def check_fold_in_ranks_like_trained(make: Make, dataset: Dataset, min_overlap: float = 0.7) -> None:
    """The fold-in of a training user's history ranks the catalog like the vector they are
    served: on average at least ``min_overlap`` of the top 10 (seen items excluded) is shared.

    The check for channels that serve trained vectors (LightFM), whose fold-in is a calibrated
    least-squares approximation of them; channels serving fold-ins share all 10."""
    ch = make().fit(dataset)
    users = np.arange(dataset.n_users, dtype=np.int64)
    served = ch.candidates(users, 10, exclude=dataset.seen).items
    y = ch.item_vectors.astype(np.float64)
    overlaps = []
    for j, u in enumerate(users):
        items, times = dataset.sequences.user(int(u))
        s = ch.fold_in(items.astype(np.int64), times).astype(np.float64) @ y.T
        s[dataset.seen[u].indices] = -np.inf
        top = np.argsort(-s, kind="stable")[:10]
        overlaps.append(len(set(top.tolist()) & set(served[j].tolist())) / 10)
    mean = float(np.mean(overlaps))
    assert mean >= min_overlap, f"fold-in shares only {mean:.2f} of the served top 10 (< {min_overlap})"


def check_online_equals_fold_in(make: Make, dataset: Dataset) -> None:
    """Feeding a history through ``observe`` in pieces gives the vector ``fold_in`` gives for
    the whole history, for a new user and for a training user with new events (plus, for a
    channel serving trained vectors, the user's fixed offset from their fold-in); events on
    items without a vector (added by ``extend_items``) change nothing."""
    ch = make().fit(dataset)
    src = int(_users(dataset)[0])
    items, times = dataset.sequences.user(src)
    items = items.astype(np.int64)
    new = dataset.n_users
    cuts = [0, 1, max(2, len(items) // 3), len(items)]
    for lo, hi in itertools.pairwise(cuts):
        if hi > lo:
            ch.observe(np.full(hi - lo, new), items[lo:hi], times[lo:hi])
    want = ch.fold_in(items, times)
    got = ch.user_vectors(np.array([new]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg="new user: online != fold-in")

    u = int(_users(dataset)[-1])
    old_items, old_times = dataset.sequences.user(u)
    t0 = float(old_times.max())
    # What training left beside the fold-in (zero for channels serving fold-ins); it stays.
    offset = ch.user_vectors(np.array([u]))[0] - ch.fold_in(old_items.astype(np.int64), old_times)
    add_items = np.array([int(items[0]), int(items[-1]), int(items[0])], dtype=np.int64)  # a repeat too
    add_times = t0 + np.array([3600.0, 7200.0, 86400.0 * 3])
    ch.observe(np.full(2, u), add_items[:2], add_times[:2])
    ch.observe(np.full(1, u), add_items[2:], add_times[2:])
    full_items = np.concatenate([old_items.astype(np.int64), add_items])
    full_times = np.concatenate([old_times, add_times])
    want = ch.fold_in(full_items, full_times) + offset
    got = ch.user_vectors(np.array([u]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg="training user: online != fold-in")

    ch.extend_items(2)
    ch.observe(np.array([u]), np.array([dataset.n_items + 1]), np.array([t0 + 86400.0 * 3]))
    got2 = ch.user_vectors(np.array([u]))[0]
    np.testing.assert_allclose(
        got2, want, rtol=1e-4, atol=1e-5, err_msg="an item without a vector moved the user"
    )


FACTOR_CHECKS: tuple[Callable[[Make, Dataset], None], ...] = (
    check_fold_in_matches_trained,
    check_fold_in_ranks_like_trained,
    check_online_equals_fold_in,
)
