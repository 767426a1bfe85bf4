"""Can the LLM re-ranker's LoRA fine-tune learn? Two small CPU checks of SmolLM2-135M.

``toy``: 16 examples, 20 one-word candidates each; the user's history holds a random word and
the target, so the target is the candidate named in the history. A model that binds labels to
candidates learns this in a few steps; one that does not stays at the uniform loss ln 20.
Run once per ``--layout`` (label after or before the candidate text).

``ml100k``: next-item examples from ml-100k's leave-one-out validation step (history = the
train split, candidates = the 20 most popular unseen items of the train split, the target
replacing a random one when missed), ``--train`` users to fine-tune on and ``--val`` other
users to validate on; validation loss and top-1 accuracy before and after, and the position
profile of the fine-tuned model on the validation users.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_llm_learn.py \\
        --tasks toy-after toy-before ml100k-after --out benchmarks/results/llm-learn/learn.json

Writes JSON (machine, versions, git commit, command, per-epoch logs, timings) to ``--out``
after every task.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from driftrank._atomic import write_text_atomic
from driftrank._machine import machine_info

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "piano", "garden", "rocket", "candle", "forest",
    "mirror", "castle", "dragon", "pencil", "silver", "window", "winter", "summer", "ocean",
    "bridge", "hammer", "jacket", "lemon", "violin", "planet", "coffee", "bottle", "camera",
    "desert", "island",
]  # fmt: skip


def toy_examples(n: int = 16, seed: int = 0) -> list[Any]:
    """``n`` examples whose target is the candidate named in the two-item history."""
    from driftrank.rerank._llm import LLMExample, LLMQuery

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = [str(w) for w in rng.choice(WORDS, 21, replace=False)]
        t = int(rng.integers(20))
        q = LLMQuery([words[20], words[t]], np.zeros(2), at=60.0, candidates=words[:20], key=i)
        out.append(LLMExample(q, t))
    return out


def ml100k_examples(data_home: str | None, n_train: int, n_val: int, seed: int) -> tuple[list, list, dict]:
    """Validation-step examples of ``n_train + n_val`` random ml-100k users (see the docstring)."""
    from driftrank.data import load_dataset
    from driftrank.eval import leave_one_out
    from driftrank.rerank._llm import build_llm_examples
    from driftrank.retrieval import PopularityRanker

    split = leave_one_out(load_dataset("ml-100k", data_home, download=False))
    train, v = split.train, split.validation
    pick = np.random.default_rng(seed).permutation(len(v.users))[: n_train + n_val]
    users, items, times = v.users[pick], v.items[pick], v.timestamps[pick]
    cands = PopularityRanker().fit(train).rank(users, 20, exclude=train.seen)
    ex = build_llm_examples(train, users, cands, items, at=times, max_history=10, seed=seed)
    retrieved = (cands.items == items[:, None]).any(1)
    info = {
        "train_users": n_train,
        "val_users": n_val,
        "target_retrieved_by_popularity_val": float(retrieved[n_train:].mean()),
        "target_first_in_popularity_order_val": float(np.mean([e.target == 0 for e in ex[n_train:]])),
    }
    return ex[:n_train], ex[n_train:], info


def main(argv: list[str] | None = None) -> int:
    """Run the chosen tasks and write their JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["toy-after", "toy-before", "ml100k-after"])
    parser.add_argument("--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"))
    parser.add_argument("--out", default="benchmarks/results/llm-learn/learn.json")
    parser.add_argument("--train", type=int, default=192, help="ml100k: users to fine-tune on")
    parser.add_argument("--val", type=int, default=96, help="ml100k: other users to validate on")
    parser.add_argument("--lr", type=float, default=1e-3, help="ml100k learning rate (toy: 2e-3)")
    parser.add_argument("--epochs", type=int, default=1, help="ml100k epochs (toy: 6)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from driftrank.rerank._llm import LLMReranker, LLMRerankerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "git_commit": commit,
        "machine": machine_info(),
        "note": "2 CPU cores shared with other jobs: timings are noisy upper bounds",
        "uniform_loss_ln20": math.log(20),
        "tasks": {},
    }

    def dump() -> None:
        write_text_atomic(out, json.dumps(result, indent=2))

    for task in args.tasks:
        kind, layout = task.split("-")
        t0 = time.perf_counter()
        entry: dict[str, Any] = {"label_layout": layout}
        if kind == "toy":
            train = val = toy_examples(seed=args.seed)
            cfg = LLMRerankerConfig(
                interest_dim=None,
                label_layout=layout,  # type: ignore[arg-type]
                device="cpu",
                max_history=2,
                system_prompt="You are a recommender system.",
                learning_rate=2e-3,
                lora_dropout=0.0,
                train_batch_size=4,
                epochs=6,
                warmup_fraction=0.1,
                batch_size=16,
                seed=args.seed,
            )
        elif kind == "ml100k":
            train, val, entry["data"] = ml100k_examples(args.data_home, args.train, args.val, args.seed)
            cfg = LLMRerankerConfig(
                interest_dim=None,
                label_layout=layout,  # type: ignore[arg-type]
                device="cpu",
                max_history=5,
                max_text_chars=40,
                learning_rate=args.lr,
                lora_dropout=0.0,
                train_batch_size=8,
                epochs=args.epochs,
                batch_size=16,
                seed=args.seed,
            )
        else:
            parser.error(f"unknown task {task!r}: toy-after, toy-before, ml100k-after or ml100k-before")
        rr = LLMReranker(cfg)
        entry["config"] = cfg.to_dict()
        entry["prompt_tokens_mean"] = float(
            np.mean([len(rr._prompt(e.query, list(range(len(e.query.candidates))), 0).ids) for e in val])
        )
        entry["example_prompt"] = rr.prompt_text(val[0].query)
        entry["before"] = dict(zip(("loss", "accuracy"), rr.loss(val)))
        rr.fit(train, validation=val if kind == "ml100k" else None, progress=True)
        entry["train_log"] = rr.train_log_
        entry["after"] = dict(zip(("loss", "accuracy"), rr.loss(val)))
        if kind == "ml100k":
            entry["position_profile_val"] = [
                round(float(x), 4) for x in rr.position_profile([e.query for e in val])
            ]
        entry["seconds"] = time.perf_counter() - t0
        result["tasks"][task] = entry
        print(task, {k: entry[k] for k in ("before", "after", "seconds")}, flush=True)
        dump()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
