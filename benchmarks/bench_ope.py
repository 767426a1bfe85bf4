"""Off-policy evaluation on the Open Bandit Dataset sample: validation table and plot.

From the uniform-random log, estimate the click rate of the Bernoulli Thompson sampling
policy (its action shares taken from its own log) with IPS, SNIPS, doubly robust and
rejection replay, and check each interval against the BTS log's own mean click; the reverse
direction (uniform policy from the BTS log); and a logistic recommender fitted on one half of
the random log, evaluated on the other half against both logging policies' rates.

    DRIFTRANK_DATA_HOME=../shared/data .venv/bin/python benchmarks/bench_ope.py

Prints a markdown table per interval method; writes ``ope.json`` (with the machine, library
versions, seed and timings), ``ope.md`` and ``ope.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from driftrank._atomic import write_text_atomic
from driftrank._machine import machine_info


def simulated_coverage(n_seeds: int, n_rounds: int) -> list[dict[str, object]]:
    """Coverage of each estimator's 95% interval on simulated logs with a known true value.

    4 contexts, 5 actions, 2 slots; clicks from a logistic model of (context, action) plus a slot
    effect; a softmax logging policy (or uniform, for the rejection replay) and a target policy
    that prefers high-click actions. The true value is computed exactly from the tables.
    """
    import numpy as np

    from driftrank.replay import (
        BanditLog,
        LogisticConfig,
        LogisticRewardModel,
        MeanRewardModel,
        doubly_robust,
        ips,
        on_policy,
        rejection_replay,
        snips,
    )

    rng0 = np.random.default_rng(12345)
    n_ctx, n_act, n_pos = 4, 5, 2
    p_ctx, p_pos = np.array([0.4, 0.3, 0.2, 0.1]), np.array([0.6, 0.4])
    ctr = 1 / (1 + np.exp(-(rng0.normal(-0.5, 0.8, (n_ctx, n_act))[:, :, None] + np.array([0.0, -0.7]))))
    mu = np.exp(rng0.normal(0, 0.4, (n_ctx, n_act)))
    mu /= mu.sum(axis=1, keepdims=True)
    pi = np.exp(3 * ctr) / np.exp(3 * ctr).sum(axis=1, keepdims=True)
    truth = float(np.einsum("c,p,cap,cap->", p_ctx, p_pos, pi, ctr))

    def simulate(seed: int, uniform: bool) -> tuple[BanditLog, np.ndarray]:
        rng = np.random.default_rng(seed)
        c = rng.choice(n_ctx, size=n_rounds, p=p_ctx)
        p = rng.choice(n_pos, size=n_rounds, p=p_pos)
        m = np.full_like(mu, 1 / n_act) if uniform else mu
        a = np.minimum((rng.random(n_rounds)[:, None] > m[c].cumsum(axis=1)).sum(axis=1), n_act - 1)
        r = (rng.random(n_rounds) < ctr[c, a, p]).astype(float)
        log = BanditLog(
            a, p, r, m[c, a], np.arange(n_rounds, dtype=float), c[:, None],
            (tuple(f"c{j}" for j in range(n_ctx)),), np.zeros((n_rounds, 0), np.float32),
            np.eye(n_act), tuple(f"a{j}" for j in range(n_act)), np.arange(n_act), n_pos, "simulated",
        )  # fmt: skip
        return log, pi[c]

    estimators = {
        "ips": lambda log, d, s: ips(log, d),
        "snips": lambda log, d, s: snips(log, d),
        "dr (mean model, misspecified)": lambda log, d, s: doubly_robust(
            log, d, reward_model=MeanRewardModel(), seed=s
        ),
        "dr (logistic, well specified)": lambda log, d, s: doubly_robust(
            log, d, reward_model=LogisticRewardModel(LogisticConfig(l2=0.1)), seed=s
        ),
        "replay (uniform log)": lambda log, d, s: rejection_replay(log, d, seed=s),
        "naive: log mean (control)": lambda log, d, s: on_policy(log),
    }
    rows = []
    for name, fn in estimators.items():
        seeds = range(max(20, n_seeds // 5)) if "logistic" in name else range(n_seeds)
        ests = [fn(*simulate(10_000 + s, uniform=name.startswith("replay")), s) for s in seeds]
        vals = np.array([e.value for e in ests])
        rows.append(
            {
                "estimator": name,
                "n_seeds": len(ests),
                "coverage": float(np.mean([e.covers(truth) for e in ests])),
                "bias": float(vals.mean() - truth),
                "bias_in_se": float((vals.mean() - truth) / (vals.std(ddof=1) / np.sqrt(len(vals)))),
                "sd": float(vals.std(ddof=1)),
                "mean_ci_width": float(np.mean([e.ci_high - e.ci_low for e in ests])),
                "truth": truth,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the study with normal and bootstrap intervals; write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-home", default=os.environ.get("DRIFTRANK_DATA_HOME"), help="folder holding obd/"
    )
    parser.add_argument("--out", default="benchmarks/results/ope", help="output folder")
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dr-model", choices=("mean", "logistic"), default="mean")
    parser.add_argument("--coverage-seeds", type=int, default=200, help="simulated logs (0: skip)")
    parser.add_argument("--coverage-rounds", type=int, default=1500, help="rounds per simulated log")
    args = parser.parse_args(argv)

    from driftrank.replay import run_obd_study

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {"machine": machine_info(), "command": " ".join([sys.executable, *sys.argv])}
    tables = []
    primary = None
    for ci in ("normal", "bootstrap"):
        t = time.perf_counter()
        study = run_obd_study(
            args.data_home,
            level=args.level,
            ci=ci,
            n_boot=args.n_boot,
            seed=args.seed,
            dr_model=args.dr_model,
        )
        seconds = time.perf_counter() - t
        primary = primary or study
        covered = [study.covers(r) for r in study.rows if r.truth is not None]
        summary = f"{sum(bool(c) for c in covered)} of {len(covered)} validation intervals cover the truth"
        tables.append(f"### {ci} intervals ({seconds:.1f} s; {summary})\n\n{study.table()}\n")
        results[ci] = {**study.to_dict(), "seconds": seconds, "summary": summary}
        print(tables[-1])
    assert primary is not None
    if args.coverage_seeds:
        t = time.perf_counter()
        cov = simulated_coverage(args.coverage_seeds, args.coverage_rounds)
        lines = [
            f"### simulated logs: 95% interval coverage of the known true value "
            f"({args.coverage_rounds} rounds each, {time.perf_counter() - t:.1f} s)\n",
            "| estimator | seeds | coverage | bias | bias / SE | sd | mean CI width |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in cov:
            lines.append(
                f"| {r['estimator']} | {r['n_seeds']} | {r['coverage']:.3f} | {r['bias']:+.4f} | "
                f"{r['bias_in_se']:+.1f} | {r['sd']:.4f} | {r['mean_ci_width']:.4f} |"
            )
        tables.append("\n".join(lines) + "\n")
        results["simulated_coverage"] = cov
        print(tables[-1])
    write_text_atomic(out / "ope.json", json.dumps(results, indent=2, allow_nan=False))
    write_text_atomic(out / "ope.md", "\n".join(tables))
    primary.plot(out / "ope.png")
    print(f"wrote {out / 'ope.json'}, {out / 'ope.md'} and {out / 'ope.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
