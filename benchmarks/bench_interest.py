"""Candidate recall@50/100/200 of the InterestChannel, leave-one-out test split, MiniLM item vectors."""

import math
import sys
import time

import numpy as np

from driftrank.data import load_dataset
from driftrank.eval import leave_one_out
from driftrank.rerank._encoder import SentenceEncoder, SentenceEncoderConfig
from driftrank.rerank._interest import InterestConfig as IC  # noqa: N817 - keeps the settings table short
from driftrank.rerank._interest_channel import InterestChannel, InterestChannelConfig
from driftrank.retrieval import PopularityRanker

NS = (50, 100, 200)
SETTINGS = {  # label -> InterestChannelConfig arguments
    "time 1h": dict(interest=IC(half_lives_days=(1 / 24,))),
    "time 1d": dict(interest=IC(half_lives_days=(1.0,))),
    "time 30d": dict(interest=IC(half_lives_days=(30.0,))),
    "time 365d": dict(interest=IC(half_lives_days=(365.0,))),
    "mean (no decay)": dict(interest=IC(half_lives_days=(math.inf,))),
    "position 1": dict(interest=IC(mode="position", position_half_lives=(1.0,))),
    "position 2 (default)": dict(interest=IC(mode="position", position_half_lives=(2.0,))),
    "position 4": dict(interest=IC(mode="position", position_half_lives=(4.0,))),
    "position 16": dict(interest=IC(mode="position", position_half_lives=(16.0,))),
    "time 1/30/365 sum": dict(interest=IC(half_lives_days=(1.0, 30.0, 365.0)), combine="sum"),
    "time 1/30/365 max": dict(interest=IC(half_lives_days=(1.0, 30.0, 365.0)), combine="max"),
    "position 2/16 sum": dict(interest=IC(mode="position", position_half_lives=(2.0, 16.0)), combine="sum"),
    "position 2/16 sum 3:1": dict(
        interest=IC(mode="position", position_half_lives=(2.0, 16.0)), combine="sum", scale_weights=(3.0, 1.0)
    ),
    "position 2/16 max": dict(interest=IC(mode="position", position_half_lives=(2.0, 16.0)), combine="max"),
    "both 1d + position 4 sum": dict(
        interest=IC(mode="both", half_lives_days=(1.0,), position_half_lives=(4.0,)), combine="sum"
    ),
    "both 1d + position 4 max": dict(
        interest=IC(mode="both", half_lives_days=(1.0,), position_half_lives=(4.0,)), combine="max"
    ),
}


def hits(items: np.ndarray, targets: np.ndarray, n: int) -> np.ndarray:
    return (items[:, :n] == targets[:, None]).any(axis=1)


def main(names: list[str]) -> None:
    enc = SentenceEncoder(SentenceEncoderConfig(progress=False))
    for name in names:
        ds = load_dataset(name)
        split = leave_one_out(ds)
        hist, test = split.train_valid, split.test
        vecs = enc.encode(ds.item_texts)  # cached after the first run
        print(f"\n## {name}: {ds.n_items} items, {len(test)} test users\n")
        print("| setting | R@50 | R@100 | R@200 | candidates CPU s |\n|---|---|---|---|---|")
        pop = PopularityRanker().fit(hist).rank(test.users, 200, exclude=hist.seen).items
        print(
            "| popularity (reference) | "
            + " | ".join(f"{hits(pop, test.items, n).mean():.4f}" for n in NS)
            + " | |"
        )
        default_items = None
        for label, kw in SETTINGS.items():
            ch = InterestChannel(InterestChannelConfig(**kw), item_vectors=vecs).fit(hist)
            t = time.process_time()
            items = ch.candidates(test.users, 200, exclude=hist.seen, at=test.timestamps).items
            cpu = time.process_time() - t
            if "default" in label:
                default_items = items
            r = " | ".join(f"{hits(items, test.items, n).mean():.4f}" for n in NS)
            print(f"| {label} | {r} | {cpu:.2f} |", flush=True)
        # In a merge: popularity's and the default channel's top n/2 each, against popularity's top n.
        print(
            "\n| budget n | popularity@n | pop@n/2 ∪ interest@n/2 | targets only interest@n finds |\n|---|---|---|---|"
        )
        assert default_items is not None
        for n in (100, 200):
            union = hits(pop, test.items, n // 2) | hits(default_items, test.items, n // 2)
            only = hits(default_items, test.items, n) & ~hits(pop, test.items, n)
            print(f"| {n} | {hits(pop, test.items, n).mean():.4f} | {union.mean():.4f} | {only.mean():.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["ml-100k", "ml-latest-small"])
