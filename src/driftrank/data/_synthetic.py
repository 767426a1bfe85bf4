"""A seeded generator of users whose interests drift between topics, with topic-bearing titles."""

from __future__ import annotations

import numpy as np
import polars as pl

from driftrank.data._dataset import Dataset

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "space": (
        ["Galactic", "Orbital", "Stellar", "Cosmic", "Lunar"],
        ["Starship", "Nebula", "Voyage", "Frontier", "Colony"],
    ),
    "heist": (
        ["Silent", "Golden", "Midnight", "Perfect", "Double"],
        ["Heist", "Vault", "Robbery", "Score", "Getaway"],
    ),
    "romance": (
        ["Tender", "Summer", "Secret", "Parisian", "Lasting"],
        ["Love", "Romance", "Wedding", "Kiss", "Heart"],
    ),
    "horror": (
        ["Haunted", "Bloody", "Cursed", "Dark", "Hollow"],
        ["Ghost", "Nightmare", "Crypt", "Demon", "Terror"],
    ),
    "cooking": (
        ["Rustic", "Spicy", "Golden", "Grandma's", "Street"],
        ["Kitchen", "Recipe", "Feast", "Bakery", "Chef"],
    ),
    "sports": (
        ["Final", "Fast", "Iron", "Underdog", "Winning"],
        ["Champion", "League", "Stadium", "Race", "Goal"],
    ),
    "western": (
        ["Dusty", "Lonesome", "Wild", "Outlaw", "Frontier"],
        ["Ranch", "Sheriff", "Saloon", "Canyon", "Gunslinger"],
    ),
    "music": (
        ["Electric", "Velvet", "Rolling", "Blue", "Broken"],
        ["Guitar", "Concert", "Melody", "Band", "Encore"],
    ),
}


def make_drifting(
    n_users: int = 300,
    n_items: int = 400,
    n_topics: int = 6,
    events_per_user: tuple[int, int] = (20, 40),
    noise: float = 0.1,
    seed: int = 0,
    name: str = "synthetic",
) -> Dataset:
    """Users who switch from one topic to another half way through their history.

    Every item belongs to one topic and its title carries that topic's words (``"Cursed Crypt
    17"``); its genre is the topic. Each user starts on topic A, then moves to topic B (a
    different one) for the second half of their events; with probability ``noise`` an event is
    a popular item of any topic. Within a topic items are chosen by a Zipf-like popularity.
    Events are hours to days apart. Same ``seed``, same data set.

    The per-user topic pair is stored in ``dataset.meta["topics"]`` as ``int[n_users, 2]``.
    """
    if not 2 <= n_topics <= len(TOPICS):
        raise ValueError(f"n_topics must be in [2, {len(TOPICS)}], got {n_topics}")
    if n_items < n_topics * 2:
        raise ValueError(f"n_items must be at least 2 * n_topics = {2 * n_topics}, got {n_items}")
    lo, hi = events_per_user
    if not 2 <= lo <= hi:
        raise ValueError(f"events_per_user must be (lo, hi) with 2 <= lo <= hi, got {events_per_user}")
    rng = np.random.default_rng(seed)
    topic_names = list(TOPICS)[:n_topics]
    item_topic = np.arange(n_items) % n_topics
    titles, genres = [], []
    for i, t in enumerate(item_topic):
        adjectives, nouns = TOPICS[topic_names[t]]
        titles.append(f"{adjectives[(i // n_topics) % 5]} {nouns[(i // (n_topics * 5)) % 5]} {i}")
        genres.append([topic_names[t]])
    by_topic = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    # Zipf-like popularity inside each topic, and globally for the noise events.
    weights = [1.0 / np.arange(1, len(ix) + 1) ** 0.8 for ix in by_topic]
    weights = [w / w.sum() for w in weights]
    global_w = 1.0 / np.arange(1, n_items + 1) ** 0.8
    global_w /= global_w.sum()
    global_order = rng.permutation(n_items)

    users, items, times = [], [], []
    topics = np.zeros((n_users, 2), dtype=np.int64)
    t0 = 1_600_000_000.0
    for u in range(n_users):
        a, b = rng.choice(n_topics, size=2, replace=False)
        topics[u] = (a, b)
        n = int(rng.integers(lo, hi + 1))
        start = t0 + rng.uniform(0, 30 * 86400)
        gaps = rng.exponential(6 * 3600, size=n)
        ts = start + np.cumsum(gaps)
        seen: set[int] = set()
        for k in range(n):
            topic = a if k < n // 2 else b
            for _ in range(20):  # resample repeats; histories hold distinct items
                if rng.random() < noise:
                    item = int(global_order[rng.choice(n_items, p=global_w)])
                else:
                    item = int(rng.choice(by_topic[topic], p=weights[topic]))
                if item not in seen:
                    break
            seen.add(item)
            users.append(u)
            items.append(item)
            times.append(float(np.floor(ts[k])))
    inter = pl.DataFrame({"user_id": users, "item_id": items, "timestamp": times})
    item_frame = pl.DataFrame({"item_id": np.arange(n_items), "title": titles, "genres": genres})
    user_frame = pl.DataFrame(
        {
            "user_id": np.arange(n_users),
            "age": rng.integers(18, 70, size=n_users),
            "segment": rng.choice(["a", "b", "c"], size=n_users),
        }
    )
    ds = Dataset.from_frames(inter, item_frame, user_frame, name=name, catalog="all", source="synthetic")
    # Map the per-user topics (raw user id order) onto user indices.
    order = ds.user_ids.indices(range(n_users))
    idx_topics = np.zeros_like(topics)
    idx_topics[order] = topics
    ds.meta["topics"] = idx_topics
    ds.meta["item_topic"] = item_topic[ds.item_ids.ids]
    ds.meta["topic_names"] = topic_names
    return ds
