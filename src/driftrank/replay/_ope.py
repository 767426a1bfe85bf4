"""Off-policy estimators of a policy's expected reward from a log of another policy.

Positions: a :class:`~driftrank.replay.BanditLog` row is one slot decision with the logging
policy's *marginal* propensity for the shown item at that slot. An evaluation policy gives,
for each logged round, a distribution over actions either for every slot
(``float[n_rounds, n_actions, n_positions]``: the probability that it shows action ``a`` at
slot ``p``) or one slot-independent distribution (``float[n_rounds, n_actions]``, used at
every slot). Each estimator compares, at the logged slot, the evaluation policy's probability
of the logged action with the logging propensity, so the value estimated is the expected
reward per slot decision with slots weighted as in the log (for OBD, the click rate per shown
item). Interactions between slots of one page are not modelled.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np

from driftrank.errors import ConfigError, DataError, OverlapWarning
from driftrank.replay._bandit import BanditLog
from driftrank.replay._reward import MeanRewardModel, RewardModel

__all__ = [
    "Estimate",
    "doubly_robust",
    "evaluate_policy",
    "ips",
    "on_policy",
    "rejection_replay",
    "snips",
]

CI = Literal["normal", "bootstrap"]

# A policy with more than this share of its probability outside the log's support is warned
# about (OverlapWarning); the share is reported in every estimate's details either way.
OVERLAP_TOLERANCE = 0.01
EstimatorName = Literal["ips", "snips", "dr", "replay"]


@dataclass(frozen=True)
class Estimate:
    """A policy-value estimate with its confidence interval.

    ``value`` is the estimated expected reward per round; ``[ci_low, ci_high]`` its ``level``
    interval by ``ci`` (``"normal"``: value ± z·std_err; ``"wilson"``: Wilson's score interval
    for a mean of 0/1 rewards; ``"bootstrap"``: percentile interval over resampled rounds); ``n_rounds`` rounds were used; ``details`` holds diagnostics
    (``max_weight``, ``ess`` = effective sample size of the importance weights,
    ``n_rewarded`` = rounds with a non-zero reward that the estimate actually uses,
    ``n_accepted`` for the rejection replay, ...). With rare rewards (clicks), an interval
    resting on fewer than about ten rewarded rounds is unreliable, and one resting on none
    collapses to a point: read ``n_rewarded`` before the interval.
    """

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    std_err: float
    n_rounds: int
    level: float
    ci: str
    details: dict[str, float] = field(default_factory=dict)

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies inside the interval."""
        return bool(self.ci_low <= value <= self.ci_high)

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON reports (NaN as ``None``)."""
        out: dict[str, object] = {}
        for k, v in self.__dict__.items():
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            elif isinstance(v, dict):
                v = {a: (None if isinstance(b, float) and not math.isfinite(b) else b) for a, b in v.items()}
            out[k] = v
        return out


# ---------------------------------------------------------------------- inputs
def _check_common(level: float, ci: str, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if ci not in ("normal", "bootstrap"):
        raise ConfigError(f"ci must be 'normal' or 'bootstrap', got {ci!r}")
    if not isinstance(n_boot, int) or n_boot <= 0:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}")


def slot_distribution(log: BanditLog, action_dist: np.ndarray) -> np.ndarray:
    """``float64[n_rounds, n_actions]``: the evaluation policy's distribution at each round's
    logged slot, from ``action_dist`` of shape ``[n_rounds, n_actions]`` (slot-independent) or
    ``[n_rounds, n_actions, n_positions]``; checks that it is a distribution."""
    d = np.asarray(action_dist, dtype=np.float64)
    n, k, p = log.n_rounds, log.n_actions, log.n_positions
    if d.shape == (n, k):
        at = d
    elif d.shape == (n, k, p):
        at = d[np.arange(n), :, log.positions]
    else:
        raise DataError(
            f"action_dist must have shape ({n}, {k}) or ({n}, {k}, {p}) for log {log.name!r}, got {d.shape}"
        )
    if not np.all(np.isfinite(at)) or (at < 0).any():
        raise DataError("action_dist must hold finite non-negative probabilities")
    sums = at.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
    if bad.size:
        raise DataError(
            f"action_dist must sum to 1 over actions at each round's slot; round {bad[0]} sums to {sums[bad[0]]}"
        )
    return at


def _weights(log: BanditLog, at: np.ndarray, clip: float | None) -> np.ndarray:
    w = at[np.arange(log.n_rounds), log.actions] / log.propensities
    if clip is not None:
        if not clip > 0:
            raise ConfigError(f"clip must be positive or None, got {clip}")
        w = np.minimum(w, clip)
    return w


def _support(log: BanditLog, at: np.ndarray, estimator: str) -> dict[str, float]:
    """How much of the evaluation policy's probability falls on (action, slot) pairs that
    never occur in the log: ``unsupported_mass`` (mean over rounds) and
    ``unsupported_rounds`` (share of rounds with any). Warns (:class:`OverlapWarning`) above
    :data:`OVERLAP_TOLERANCE`: no estimator sees those actions' rewards, so its interval is
    narrower than its error."""
    n = log.n_rounds
    mass = np.zeros(n)
    if n:
        seen = np.zeros((log.n_actions, log.n_positions), dtype=bool)
        seen[log.actions, log.positions] = True
        for p in range(log.n_positions):
            missing = np.flatnonzero(~seen[:, p])
            if missing.size:
                rows = np.flatnonzero(log.positions == p)
                mass[rows] = at[np.ix_(rows, missing)].sum(axis=1)
    out = {
        "unsupported_mass": float(mass.mean()) if n else 0.0,
        "unsupported_rounds": float((mass > 1e-12).mean()) if n else 0.0,
    }
    if out["unsupported_mass"] > OVERLAP_TOLERANCE:
        warnings.warn(
            OverlapWarning(
                f"{estimator} on log {log.name!r}: the evaluation policy puts {out['unsupported_mass']:.1%} of its "
                f"probability (in {out['unsupported_rounds']:.0%} of rounds) on actions the log never shows at "
                "that slot; no estimator sees their rewards, so the estimate is biased and its interval too "
                "narrow. Restrict the policy to logged actions or use a log that covers them"
            ),
            stacklevel=3,
        )
    return out


def _diagnostics(w: np.ndarray, rewards: np.ndarray) -> dict[str, float]:
    s2 = float(np.sum(w**2))
    return {
        "n_rewarded": float(np.count_nonzero((w > 0) & (rewards != 0))),
        # Rewarded rounds the target policy favours at least as much as the logger did: the
        # ones that carry the estimate. Few of them = an interval to distrust.
        "n_rewarded_upweighted": float(np.count_nonzero((w >= 1.0) & (rewards != 0))),
        "max_weight": float(w.max()) if w.size else float("nan"),
        "mean_weight": float(w.mean()) if w.size else float("nan"),
        "ess": float(w.sum() ** 2 / s2) if s2 > 0 else 0.0,
    }


def _mean_estimate(
    name: str, terms: np.ndarray, level: float, ci: str, n_boot: int, seed: int, details: dict[str, float]
) -> Estimate:
    """Estimate = mean of per-round terms; CI from their standard error or a bootstrap."""
    n = terms.size
    if n == 0:
        nan = float("nan")
        return Estimate(name, nan, nan, nan, nan, 0, level, ci, details)
    value = float(terms.mean())
    se = float(terms.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    if ci == "normal":
        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        lo, hi = value - z * se, value + z * se
    else:
        means = _boot_stat(n, n_boot, seed, lambda idx: terms[idx].mean(axis=1))
        lo, hi = _percentile(means, level)
    return Estimate(name, value, float(lo), float(hi), se, n, level, ci, details)


def _binary_mean_estimate(
    name: str, rewards: np.ndarray, level: float, ci: str, n_boot: int, seed: int, details: dict[str, float]
) -> Estimate:
    """A mean of rewards; for 0/1 rewards the normal interval is Wilson's score interval,
    which stays meaningful with few or no successes (where value ± z·se collapses to a point)."""
    n = rewards.size
    if ci != "normal" or n == 0 or not np.isin(rewards, (0.0, 1.0)).all():
        return _mean_estimate(name, rewards, level, ci, n_boot, seed, details)
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    v = float(rewards.mean())
    den = 1.0 + z * z / n
    centre = (v + z * z / (2 * n)) / den
    half = z * math.sqrt(v * (1 - v) / n + z * z / (4 * n * n)) / den
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # std_err consistent with the interval, so z-scores against other estimates stay sensible.
    return Estimate(name, v, lo, hi, (hi - lo) / (2 * z), n, level, "wilson", details)


def _boot_stat(n: int, n_boot: int, seed: int, stat) -> np.ndarray:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(1, n))
    for s in range(0, n_boot, chunk):
        e = min(n_boot, s + chunk)
        out[s:e] = stat(rng.integers(0, n, size=(e - s, n)))
    return out


def _percentile(values: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    return float(np.quantile(values, a)), float(np.quantile(values, 1.0 - a))


# ---------------------------------------------------------------------- estimators
def on_policy(
    log: BanditLog, *, level: float = 0.95, ci: CI = "normal", n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """The logging policy's own value: the mean reward of its log, with its interval (for 0/1
    rewards, ``ci="normal"`` gives Wilson's score interval)."""
    _check_common(level, ci, n_boot)
    details = {"n_rewarded": float(np.count_nonzero(log.rewards))}
    return _binary_mean_estimate("on-policy", log.rewards, level, ci, n_boot, seed, details)


def ips(
    log: BanditLog,
    action_dist: np.ndarray,
    *,
    clip: float | None = None,
    level: float = 0.95,
    ci: CI = "normal",
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Inverse propensity scoring: ``mean_i w_i r_i`` with ``w_i = π(a_i|x_i,p_i) / μ_i``.

    Unbiased when every action the evaluation policy may take has a positive logging
    propensity; ``clip`` caps the weights (less variance, some bias).
    """
    _check_common(level, ci, n_boot)
    at = slot_distribution(log, action_dist)
    w = _weights(log, at, clip)
    details = {**_diagnostics(w, log.rewards), **_support(log, at, "ips")}
    return _mean_estimate("ips", w * log.rewards, level, ci, n_boot, seed, details)


def snips(
    log: BanditLog,
    action_dist: np.ndarray,
    *,
    level: float = 0.95,
    ci: CI = "normal",
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Self-normalised IPS: ``sum_i w_i r_i / sum_i w_i``.

    Slightly biased, usually much less variable than IPS; invariant to adding a constant to
    rewards. Its normal interval uses the delta method
    (``se = sqrt(sum w_i^2 (r_i - V)^2) / sum w_i``); the bootstrap recomputes the ratio.
    """
    _check_common(level, ci, n_boot)
    at = slot_distribution(log, action_dist)
    w = _weights(log, at, None)
    r = log.rewards
    n = len(w)
    details = {**_diagnostics(w, r), **_support(log, at, "snips")}
    if n == 0 or w.sum() <= 0:
        nan = float("nan")
        return Estimate("snips", nan, nan, nan, nan, n, level, ci, details)
    value = float(np.sum(w * r) / np.sum(w))
    se = float(math.sqrt(np.sum(w**2 * (r - value) ** 2)) / np.sum(w))
    if ci == "normal":
        z = NormalDist().inv_cdf(0.5 + level / 2.0)
        lo, hi = value - z * se, value + z * se
    else:

        def ratio(idx: np.ndarray) -> np.ndarray:
            ws = w[idx]
            den = ws.sum(axis=1)
            return np.where(den > 0, (ws * r[idx]).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)

        vals = _boot_stat(n, n_boot, seed, ratio)
        lo, hi = _percentile(vals[np.isfinite(vals)], level)
    return Estimate("snips", value, float(lo), float(hi), se, n, level, ci, details)


def doubly_robust(
    log: BanditLog,
    action_dist: np.ndarray,
    *,
    reward_model: RewardModel | np.ndarray | None = None,
    n_folds: int = 2,
    level: float = 0.95,
    ci: CI = "normal",
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: ``mean_i [ sum_a π(a|x_i,p_i) q(x_i,a,p_i) + w_i (r_i - q(x_i,a_i,p_i)) ]``.

    ``q`` is a reward model's prediction. Unbiased if the propensities are right (whatever
    ``q``), and lower variance the better ``q`` is. With a model (default:
    :class:`MeanRewardModel`), ``q`` is cross-fitted: the rounds are split into ``n_folds``
    random folds (seeded) and each fold is predicted by a copy of the model fitted on the
    others, so no round's own reward enters its prediction (``n_folds=1`` fits and predicts on
    all rounds). An array ``float[n_rounds, n_actions]`` (at the logged slot) or
    ``float[n_rounds, n_actions, n_positions]`` gives ``q`` directly.
    """
    _check_common(level, ci, n_boot)
    at = slot_distribution(log, action_dist)
    n, k = log.n_rounds, log.n_actions
    rows = np.arange(n)
    if isinstance(reward_model, np.ndarray):
        q_all = np.asarray(reward_model, dtype=np.float64)
        if q_all.shape == (n, k, log.n_positions):
            q = q_all[rows, :, log.positions]
        elif q_all.shape == (n, k):
            q = q_all
        else:
            raise DataError(
                f"reward_model array must be ({n}, {k}) or ({n}, {k}, {log.n_positions}), got {q_all.shape}"
            )
    else:
        model: RewardModel = reward_model if reward_model is not None else MeanRewardModel()
        q = _cross_fit(log, model, n_folds, seed)
    w = _weights(log, at, None)
    direct = np.sum(at * q, axis=1)
    terms = direct + w * (log.rewards - q[rows, log.actions])
    details = {**_diagnostics(w, log.rewards), **_support(log, at, "dr")}
    details["direct_method"] = float(direct.mean()) if n else float("nan")
    return _mean_estimate("dr", terms, level, ci, n_boot, seed, details)


def _cross_fit(log: BanditLog, model: RewardModel, n_folds: int, seed: int) -> np.ndarray:
    """``float64[n_rounds, n_actions]`` predictions at each round's slot, out of fold."""
    if not isinstance(n_folds, int) or n_folds < 1:
        raise ConfigError(f"n_folds must be a positive integer, got {n_folds!r}")
    n = log.n_rounds
    rows = np.arange(n)
    q = np.empty((n, log.n_actions))
    if n_folds == 1:
        pred = copy.deepcopy(model).fit(log).predict(log)
        return pred[rows, :, log.positions]
    if n < n_folds:
        raise DataError(f"cross-fitting needs at least n_folds={n_folds} rounds, got {n}")
    fold = np.empty(n, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n)] = np.arange(n) % n_folds
    for f in range(n_folds):
        test = np.flatnonzero(fold == f)
        fitted = copy.deepcopy(model).fit(log.subset(fold != f))
        sub = log.subset(test)
        q[test] = fitted.predict(sub)[np.arange(len(test)), :, sub.positions]
    return q


def rejection_replay(
    log: BanditLog,
    action_dist: np.ndarray,
    *,
    level: float = 0.95,
    ci: CI = "normal",
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """The replay (rejection sampling) method of Li et al. (2011) for uniform-random logs.

    Each round is kept with probability ``π(a_i|x_i,p_i) / M`` where ``M`` is the largest
    probability the policy gives any action in the log (for a deterministic policy: keep the
    rounds where the policy picks the logged action); the kept rounds are distributed as if
    the evaluation policy had acted, and the estimate is their mean reward. Seeded draws. For
    0/1 rewards, ``ci="normal"`` gives Wilson's score interval (``Estimate.ci == "wilson"``).

    Raises:
        DataError: the log's propensities are not all ``1 / n_actions``.
    """
    _check_common(level, ci, n_boot)
    if not log.is_uniform():
        raise DataError(
            f"rejection replay needs a uniform-random log (every propensity 1/{log.n_actions}); "
            f"{log.name!r} is not: use ips/snips/doubly_robust"
        )
    at = slot_distribution(log, action_dist)
    top = float(at.max()) if at.size else 1.0
    p = at[np.arange(log.n_rounds), log.actions] / top
    keep = np.random.default_rng(seed).random(log.n_rounds) < p
    est = _binary_mean_estimate("replay", log.rewards[keep], level, ci, n_boot, seed, {})
    details = {
        "n_accepted": float(keep.sum()),
        "acceptance_rate": float(keep.mean()) if keep.size else 0.0,
        "n_rewarded": float(np.count_nonzero(log.rewards[keep])),
        **_support(log, at, "replay"),
    }
    return Estimate(
        est.estimator, est.value, est.ci_low, est.ci_high, est.std_err, est.n_rounds, level, est.ci, details
    )


def evaluate_policy(
    log: BanditLog,
    action_dist: np.ndarray,
    estimators: Sequence[EstimatorName] = ("ips", "snips", "dr", "replay"),
    *,
    reward_model: RewardModel | np.ndarray | None = None,
    n_folds: int = 2,
    level: float = 0.95,
    ci: CI = "normal",
    n_boot: int = 2000,
    seed: int = 0,
) -> list[Estimate]:
    """Run several estimators on one log and policy; ``"replay"`` is skipped (not an error)
    when the log is not uniform-random."""
    out: list[Estimate] = []
    for name in estimators:
        if name == "ips":
            out.append(ips(log, action_dist, level=level, ci=ci, n_boot=n_boot, seed=seed))
        elif name == "snips":
            out.append(snips(log, action_dist, level=level, ci=ci, n_boot=n_boot, seed=seed))
        elif name == "dr":
            out.append(
                doubly_robust(
                    log, action_dist, reward_model=reward_model, n_folds=n_folds,
                    level=level, ci=ci, n_boot=n_boot, seed=seed,
                )
            )  # fmt: skip
        elif name == "replay":
            if log.is_uniform():
                out.append(rejection_replay(log, action_dist, level=level, ci=ci, n_boot=n_boot, seed=seed))
        else:
            raise ConfigError(f"unknown estimator {name!r}; choose from ips, snips, dr, replay")
    return out
