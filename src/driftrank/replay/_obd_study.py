"""The Open Bandit Dataset validation study behind ``driftrank ope`` and ``benchmarks/bench_ope.py``.

1. Validation: estimate, from the uniform-random log, the click rate of the Bernoulli Thompson
   sampling (BTS) policy, and compare with the BTS log's own mean click (the truth, up to its
   own sampling noise). BTS's action probabilities are not in the random log: they are taken
   as the empirical per-slot action shares in the BTS log (over the whole week, or per day).
   The reverse direction too: the uniform policy's click rate from the BTS log.
2. A recommender: a logistic click model fitted on one random half of the random log gives
   two policies (softmax over its predicted log-CTR; its top-3 page with epsilon exploration),
   evaluated on the other half and compared with both logging policies' on-policy rates.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from driftrank._atomic import atomic_path
from driftrank.errors import ConfigError
from driftrank.replay._bandit import load_obd
from driftrank.replay._ope import OVERLAP_TOLERANCE, Estimate, evaluate_policy, on_policy
from driftrank.replay._policies import action_distribution, ranking_policy, softmax_policy, uniform_policy
from driftrank.replay._reward import LogisticRewardModel, MeanRewardModel, RewardModel

__all__ = ["ObdStudy", "StudyRow", "run_obd_study"]

Target = Literal["bts", "bts-daily", "uniform", "logistic-softmax", "logistic-top3"]
# Below this many rewarded rounds carrying the estimate, its interval is not to be trusted.
FEW_CLICKS = 10
TARGETS: tuple[Target, ...] = ("bts", "bts-daily", "uniform", "logistic-softmax", "logistic-top3")


@dataclass(frozen=True)
class StudyRow:
    """One estimate of one target policy on one log, compared with the on-policy rates.

    ``truth`` names the reference that is this target's actual on-policy rate (``"bts"`` or
    ``"random"``), or ``None`` when there is none (the recommender); ``vs`` maps each reference
    to ``(difference, z)`` with ``z = difference / sqrt(se^2 + se_ref^2)``, so ``|z| < 1.96``
    means "consistent at 95%" once both sides' noise is counted.
    """

    target: str
    log: str
    estimate: Estimate
    truth: str | None
    vs: dict[str, tuple[float, float]]

    def to_dict(self, references: dict[str, Estimate]) -> dict[str, Any]:
        """JSON-able dict."""
        e = self.estimate
        out: dict[str, Any] = {"target": self.target, "log": self.log, **e.as_dict(), "truth": self.truth}
        out["covers_truth"] = e.covers(references[self.truth].value) if self.truth else None
        out["vs"] = {k: {"diff": _f(d), "z": _f(z)} for k, (d, z) in self.vs.items()}
        return out


@dataclass(frozen=True)
class ObdStudy:
    """The study's result: on-policy ``references`` (``"random"``, ``"bts"``) and estimate rows."""

    references: dict[str, Estimate]
    rows: list[StudyRow]
    settings: dict[str, Any] = field(default_factory=dict)

    def covers(self, row: StudyRow) -> bool | None:
        """Whether ``row``'s interval contains its target's true on-policy rate."""
        return row.estimate.covers(self.references[row.truth].value) if row.truth else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return {
            "settings": self.settings,
            "references": {k: v.as_dict() for k, v in self.references.items()},
            "rows": [r.to_dict(self.references) for r in self.rows],
        }

    def table(self) -> str:
        """A markdown table of every row."""
        lvl = next(iter(self.references.values())).level
        lines = [
            "| policy | log | estimator | estimate | "
            + f"{lvl:.0%} CI"
            + " | clicks used | ESS / kept | truth | covers | z vs random | z vs bts |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, ref in self.references.items():
            lines.append(
                f"| {name} (on-policy) | obd/{name} | mean | {ref.value:.5f} | "
                f"[{ref.ci_low:.5f}, {ref.ci_high:.5f}] | {int(ref.details.get('n_rewarded', 0))} | | | | | |"
            )
        for r in self.rows:
            e = r.estimate
            cov = self.covers(r)
            nrew = _clicks_used(e)
            ess = e.details.get("ess", e.details.get("n_accepted", float("nan")))
            off = e.details.get("unsupported_mass", 0.0)
            # An estimate resting partly on actions the log never shows is flagged in the table.
            name = (
                f"{e.estimator} (no overlap: {off:.0%} of the policy)"
                if off > OVERLAP_TOLERANCE
                else e.estimator
            )
            lines.append(
                f"| {r.target} | {r.log} | {name} | {e.value:.5f} | [{e.ci_low:.5f}, {e.ci_high:.5f}] | "
                f"{_int(nrew)}{' (few)' if nrew < FEW_CLICKS else ''} | {_int(ess)} | {r.truth or '-'} | "
                f"{'-' if cov is None else ('yes' if cov else 'NO')} | "
                f"{_z(r.vs['random'][1], nrew)} | {_z(r.vs['bts'][1], nrew)} |"
            )
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """PNG: each estimate with its interval, grouped by target, with the two on-policy rates
        (line and interval band) behind."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        n = len(self.rows)
        fig, ax = plt.subplots(figsize=(10, 0.38 * n + 2.0))
        colors = {"random": "tab:blue", "bts": "tab:orange"}
        for name, ref in self.references.items():
            ax.axvspan(ref.ci_low, ref.ci_high, color=colors.get(name, "grey"), alpha=0.12)
            ax.axvline(ref.value, color=colors.get(name, "grey"), lw=1.2, label=f"{name} on-policy")
        ys = np.arange(n)[::-1]
        for y, r in zip(ys, self.rows):
            e = r.estimate
            cov = self.covers(r)
            color = "black" if cov is None else ("tab:green" if cov else "tab:red")
            few = _clicks_used(e) < FEW_CLICKS
            ax.errorbar(
                [e.value],
                [y],
                xerr=[[e.value - e.ci_low], [e.ci_high - e.value]],
                fmt="o",
                color=color,
                mfc="white" if few else color,
                capsize=3,
            )
        ax.set_yticks(ys, [f"{r.target} | {r.estimate.estimator} | {r.log}" for r in self.rows], fontsize=8)
        ax.set_xlabel("click rate per shown item")
        ax.set_title(
            "OPE on the Open Bandit Dataset sample\n(green: covers the true rate, red: misses it; "
            f"hollow: fewer than {FEW_CLICKS} clicks carry the estimate)",
            fontsize=10,
        )
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
        return Path(path)


def run_obd_study(
    data_home: str | os.PathLike[str] | None = None,
    *,
    targets: tuple[str, ...] = TARGETS,
    level: float = 0.95,
    ci: Literal["normal", "bootstrap"] = "normal",
    n_boot: int = 2000,
    seed: int = 0,
    dr_model: Literal["mean", "logistic"] = "mean",
    temperature: float = 0.5,
    epsilon: float = 0.1,
) -> ObdStudy:
    """Run the study (see the module docstring) on ``{data_home}/obd``.

    Args:
        targets: which target policies to evaluate (subset of ``bts``, ``bts-daily``,
            ``uniform``, ``logistic-softmax``, ``logistic-top3``).
        level, ci, n_boot, seed: interval settings; ``seed`` also drives the cross-fitting
            folds, the rejection draws and the random half split.
        dr_model: the doubly robust estimator's reward model: ``"mean"`` (per item-slot click
            rate, shrunk) or ``"logistic"`` (:class:`LogisticRewardModel`).
        temperature: of the softmax over the recommender's log-CTR.
        epsilon: exploration of the recommender's top-3 page.
    """
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown:
        raise ConfigError(f"unknown target(s) {unknown}; choose from {list(TARGETS)}")
    if dr_model not in ("mean", "logistic"):
        raise ConfigError(f"dr_model must be 'mean' or 'logistic', got {dr_model!r}")
    rnd = load_obd("random", data_home=data_home)
    bts = load_obd("bts", data_home=data_home, user_categories=rnd.user_categories)
    kw: dict[str, Any] = {"level": level, "ci": ci, "n_boot": n_boot, "seed": seed}
    refs = {"random": on_policy(rnd, **kw), "bts": on_policy(bts, **kw)}

    def dr() -> RewardModel:
        return MeanRewardModel() if dr_model == "mean" else LogisticRewardModel()

    rows: list[StudyRow] = []

    def add(target: str, log_name: str, estimates: list[Estimate], truth: str | None) -> None:
        for e in estimates:
            vs = {}
            for name, ref in refs.items():
                d = e.value - ref.value
                se = math.sqrt(e.std_err**2 + ref.std_err**2)
                vs[name] = (d, d / se if se > 0 else float("nan"))
            rows.append(StudyRow(target, log_name, e, truth, vs))

    if "bts" in targets:
        dist = action_distribution(bts, rnd)
        add("bts", rnd.name, evaluate_policy(rnd, dist, reward_model=dr(), **kw), "bts")
    if "bts-daily" in targets:
        dist = action_distribution(bts, rnd, bin_seconds=86400.0)
        add("bts-daily", rnd.name, evaluate_policy(rnd, dist, reward_model=dr(), **kw), "bts")
    if "uniform" in targets:
        add("uniform", bts.name, evaluate_policy(bts, uniform_policy(bts), reward_model=dr(), **kw), "random")
    rec = [t for t in targets if t.startswith("logistic")]
    if rec:
        perm = np.random.default_rng(seed).permutation(rnd.n_rounds)
        half = rnd.n_rounds // 2
        train, test = rnd.subset(np.sort(perm[:half])), rnd.subset(np.sort(perm[half:]))
        ctr = LogisticRewardModel().fit(train).predict(test)[:, :, 0]  # slots rank alike
        label = f"{rnd.name} (held-out half)"
        if "logistic-softmax" in targets:
            pol = softmax_policy(np.log(ctr), temperature)
            add("logistic-softmax", label, evaluate_policy(test, pol, reward_model=dr(), **kw), None)
        if "logistic-top3" in targets:
            pol = ranking_policy(ctr, test.n_positions, epsilon=epsilon)
            add("logistic-top3", label, evaluate_policy(test, pol, reward_model=dr(), **kw), None)
    settings = {
        "data": str(data_home) if data_home is not None else os.environ.get("DRIFTRANK_DATA_HOME", ""),
        "targets": list(targets),
        "level": level,
        "ci": ci,
        "n_boot": n_boot,
        "seed": seed,
        "dr_model": dr_model,
        "temperature": temperature,
        "epsilon": epsilon,
        "n_rounds": {"random": rnd.n_rounds, "bts": bts.n_rounds},
    }
    return ObdStudy(refs, rows, settings)


def _clicks_used(e: Estimate) -> float:
    """Rewarded rounds that carry the estimate (see :class:`Estimate`)."""
    return e.details.get("n_rewarded_upweighted", e.details.get("n_rewarded", float("nan")))


def _z(z: float, clicks: float) -> str:
    # With too few clicks the standard error itself is unreliable: show z, but bracketed.
    return f"({z:+.2f})" if clicks < FEW_CLICKS else f"{z:+.2f}"


def _f(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _int(x: float) -> str:
    return str(int(x)) if math.isfinite(x) else "-"
