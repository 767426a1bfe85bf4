"""Baselines beside the learnable fusion: reciprocal rank fusion and a linear mix."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np

from driftrank.errors import ConfigError, DataError, NotFittedError
from driftrank.fusion._features import FeatureBuilder, FeatureConfig
from driftrank.fusion._input import Contributions, FusionInput, target_rows

__all__ = ["LinearFusion", "LinearFusionConfig", "RRFConfig", "ReciprocalRankFusion"]


def _check_names(name: str, value: Iterable[str] | str) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(x, str) for x in value):
        raise ConfigError(f"{name} must be a tuple of names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class RRFConfig:
    """Reciprocal rank fusion: ``score = sum_s weight_s / (k + rank_s)`` with 1-based ranks.

    Attributes:
        k: the damping constant (60 in Cormack et al. 2009, robust across tasks); larger values
            flatten the difference between the first places.
        sources: candidate sources to fuse (``None`` = every source of the input).
        signals: per-candidate signals to fuse too, each turned into a within-user rank
            (higher value = better rank, ties to the lower item index; NaN = absent).
        weights: optional ``(name, weight)`` pairs; unnamed channels weigh 1.
    """

    k: float = 60.0
    sources: tuple[str, ...] | None = None
    signals: tuple[str, ...] = ()
    weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int | float) and self.k >= 0):
            raise ConfigError(f"k must be a non-negative number, got {self.k!r}")
        if self.sources is not None:
            object.__setattr__(self, "sources", _check_names("sources", self.sources))
        object.__setattr__(self, "signals", _check_names("signals", self.signals))
        try:
            w = tuple((str(n), float(v)) for n, v in self.weights)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"weights must be (name, number) pairs, got {self.weights!r}") from e
        object.__setattr__(self, "weights", w)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "k": self.k,
            "sources": None if self.sources is None else list(self.sources),
            "signals": list(self.signals),
            "weights": [list(p) for p in self.weights],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RRFConfig:
        """Inverse of :meth:`to_dict`."""
        src = d.get("sources")
        return cls(
            k=d.get("k", 60.0),
            sources=None if src is None else tuple(src),
            signals=tuple(d.get("signals", ())),
            weights=tuple((n, v) for n, v in d.get("weights", ())),
        )


def _within_user_rank(inputs: FusionInput, values: np.ndarray) -> np.ndarray:
    """0-based rank of each row within its user by ``values`` descending (NaN stays NaN)."""
    c = inputs.candidates
    user = c.user_of_row()
    key = np.where(np.isnan(values), np.inf, -values.astype(np.float64))
    order = np.lexsort((c.items, key, user))
    pos = np.empty(len(order), dtype=np.float64)
    pos[order] = np.arange(len(order)) - np.repeat(c.offsets[:-1], c.counts())
    return np.where(np.isnan(values), np.nan, pos).astype(np.float32)


class ReciprocalRankFusion:
    """Fuses the rank columns of the candidates (and optionally ranked signals) by RRF.

    Needs no training (:meth:`fit` only checks the names); contributions are exact: each
    channel's ``weight / (k + rank)``, 0 where it did not retrieve the item.
    """

    def __init__(self, config: RRFConfig | None = None) -> None:
        self.config = config or RRFConfig()

    def _channels(self, inputs: FusionInput) -> tuple[tuple[str, ...], np.ndarray]:
        """Channel names and their 0-based ranks ``float32[m, n_channels]`` (NaN = absent)."""
        c = inputs.candidates
        sources = c.sources if self.config.sources is None else self.config.sources
        missing = [s for s in sources if s not in c.sources] + [
            s for s in self.config.signals if s not in inputs.signals
        ]
        if missing:
            raise DataError(
                f"RRF channels {missing} are not in the input (sources {list(c.sources)}, "
                f"signals {list(inputs.signals)})"
            )
        cols = [c.ranks[:, c.sources.index(s)] for s in sources]
        cols += [_within_user_rank(inputs, inputs.signals[s]) for s in self.config.signals]
        names = tuple(sources) + self.config.signals
        ranks = np.stack(cols, axis=1) if cols else np.zeros((inputs.n_rows, 0), dtype=np.float32)
        if np.any(ranks[~np.isnan(ranks)] < 0):
            raise DataError("ranks must be >= 0 (0-based) or NaN")
        return names, ranks

    def fit(self, inputs: FusionInput, targets: np.ndarray | None = None) -> Self:
        """Nothing to learn; checks that the configured channels are in ``inputs``."""
        self._channels(inputs)
        return self

    def _terms(self, inputs: FusionInput) -> tuple[tuple[str, ...], np.ndarray]:
        names, ranks = self._channels(inputs)
        w = dict(self.config.weights)
        weights = np.array([w.get(n, 1.0) for n in names], dtype=np.float64)
        terms = weights / (self.config.k + ranks.astype(np.float64) + 1.0)
        return names, np.nan_to_num(terms, nan=0.0)

    def score(self, inputs: FusionInput) -> np.ndarray:
        """``float32[m]`` RRF score of every candidate row."""
        return self._terms(inputs)[1].sum(axis=1).astype(np.float32)

    def explain(self, inputs: FusionInput, rows: np.ndarray | None = None) -> Contributions:
        """Each channel's exact term ``weight / (k + rank)`` (``base`` is 0)."""
        names, terms = self._terms(inputs)
        if rows is not None:
            terms = terms[np.asarray(rows, dtype=np.int64)]
        return Contributions(
            names, terms.astype(np.float32), np.zeros(len(terms), dtype=np.float32), "exact (RRF terms)"
        )

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``; RRF has no arrays."""
        return {"kind": "rrf", "config": self.config.to_dict()}, {}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> ReciprocalRankFusion:
        """Rebuild from :meth:`get_state`."""
        if config.get("kind") != "rrf":
            raise ConfigError(f"state is of kind {config.get('kind')!r}, expected 'rrf'")
        return cls(RRFConfig.from_dict(config["config"]))


@dataclass(frozen=True)
class LinearFusionConfig:
    """A linear mix of the scaled features (see :class:`FeatureConfig`).

    Attributes:
        method: ``"fixed"`` uses ``weights`` as given (only the scaling is learned);
            ``"logistic"`` fits an L2-regularised logistic regression of "is the held-out
            target" on the candidates of users whose target was retrieved; ``"least_squares"``
            fits ridge regression on the same 0/1 labels.
        weights: for ``"fixed"``: ``(name, weight)`` pairs where a name is a feature
            (``"als:rank"``) or a group (``"als"``: the weight is shared by the group's value
            features). Empty = every candidate-level group weighs 1, split evenly over its
            value features (an equal-vote mix); missing-value indicators weigh 0.
        l2: L2 penalty of the fitted methods (on the weights, not the intercept).
        features: feature construction and scaling.
    """

    method: Literal["fixed", "logistic", "least_squares"] = "logistic"
    weights: tuple[tuple[str, float], ...] = ()
    l2: float = 1.0
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        if self.method not in ("fixed", "logistic", "least_squares"):
            raise ConfigError(f"method must be 'fixed', 'logistic' or 'least_squares', got {self.method!r}")
        if not (isinstance(self.l2, int | float) and self.l2 >= 0):
            raise ConfigError(f"l2 must be >= 0, got {self.l2!r}")
        if not isinstance(self.features, FeatureConfig):
            raise ConfigError(f"features must be a FeatureConfig, got {type(self.features).__name__}")
        try:
            w = tuple((str(n), float(v)) for n, v in self.weights)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"weights must be (name, number) pairs, got {self.weights!r}") from e
        object.__setattr__(self, "weights", w)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "method": self.method,
            "weights": [list(p) for p in self.weights],
            "l2": self.l2,
            "features": self.features.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinearFusionConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(
            method=d.get("method", "logistic"),
            weights=tuple((n, v) for n, v in d.get("weights", ())),
            l2=d.get("l2", 1.0),
            features=FeatureConfig.from_dict(d.get("features", {})),
        )


class LinearFusion:
    """``score = b + sum_f w_f x_f`` over the candidate features (user features cannot change a
    user's ranking in a linear model, so they are left out). Contributions are exact:
    ``w_f (x_f - x0_f)`` summed per group, ``x0`` being the all-missing input."""

    def __init__(self, config: LinearFusionConfig | None = None) -> None:
        self.config = config or LinearFusionConfig()
        self.features_: FeatureBuilder | None = None
        self.coef_: np.ndarray | None = None
        self.intercept_: float = 0.0

    def _fixed_weights(self, fb: FeatureBuilder) -> np.ndarray:
        w = np.zeros(len(fb.names_))
        value = ~fb.x_is_missing_
        if not self.config.weights:
            groups = np.array(fb.groups_)
            for g in fb.candidate_groups:
                sel = (groups == g) & value
                w[sel] = 1.0 / max(int(sel.sum()), 1)
            return w
        known = set(fb.names_) | set(fb.groups_) | set(fb.user_names_) | set(fb.user_groups_)
        for name, v in self.config.weights:
            if name not in known:
                raise ConfigError(f"weight for unknown feature or group {name!r}; known: {sorted(known)}")
            if name in fb.names_:
                w[fb.names_.index(name)] = v
            else:
                sel = (np.array(fb.groups_) == name) & value
                w[sel] = v / max(int(sel.sum()), 1)
        return w

    def fit(self, inputs: FusionInput, targets: np.ndarray | None = None) -> Self:
        """Learn the scaling, and for the fitted methods the weights, from held-out ``targets``."""
        fb = FeatureBuilder(self.config.features).fit(inputs)
        self.features_ = fb
        if self.config.method == "fixed":
            self.coef_ = self._fixed_weights(fb)
            self.intercept_ = 0.0
            return self
        if targets is None:
            raise DataError(f"LinearFusion(method={self.config.method!r}) needs targets to fit")
        c = inputs.candidates
        trow = target_rows(c, np.asarray(targets))
        usable = np.flatnonzero(trow >= 0)
        if len(usable) < 2:
            raise DataError(
                f"LinearFusion needs at least 2 users whose target is a candidate, got {len(usable)}"
            )
        rows = np.concatenate([np.arange(c.offsets[j], c.offsets[j + 1]) for j in usable])
        X = fb.transform(inputs, rows).x.astype(np.float64)
        y = np.zeros(inputs.n_rows)
        y[trow[usable]] = 1.0
        y = y[rows]
        if self.config.method == "least_squares":
            Xa = np.hstack([X, np.ones((len(X), 1))])
            reg = np.eye(Xa.shape[1]) * self.config.l2
            reg[-1, -1] = 0.0
            sol = np.linalg.lstsq(Xa.T @ Xa + reg, Xa.T @ y, rcond=None)[0]
            self.coef_, self.intercept_ = sol[:-1], float(sol[-1])
            return self
        from scipy.optimize import minimize

        l2 = self.config.l2

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            z = X @ theta[:-1] + theta[-1]
            # log(1 + e^z) - y z, computed stably
            loss = np.logaddexp(0.0, z) - y * z
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
            g = p - y
            n = len(y)
            grad = np.concatenate([X.T @ g / n + l2 * theta[:-1] / n, [g.mean()]])
            return float(loss.mean() + 0.5 * l2 * theta[:-1] @ theta[:-1] / n), grad

        res = minimize(objective, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B")
        self.coef_, self.intercept_ = res.x[:-1], float(res.x[-1])
        return self

    def _fitted(self) -> tuple[FeatureBuilder, np.ndarray]:
        if self.features_ is None or self.coef_ is None:
            raise NotFittedError("LinearFusion used before fit")
        return self.features_, self.coef_

    def score(self, inputs: FusionInput) -> np.ndarray:
        """``float32[m]`` linear score of every candidate row."""
        fb, w = self._fitted()
        x = fb.transform(inputs).x.astype(np.float64)
        return (x @ w + self.intercept_).astype(np.float32)

    def explain(self, inputs: FusionInput, rows: np.ndarray | None = None) -> Contributions:
        """Exact per-group terms ``w_f (x_f - x0_f)``; ``base`` = the all-missing score."""
        fb, w = self._fitted()
        x = fb.transform(inputs, rows).x.astype(np.float64)
        x0 = fb.baseline()[0].astype(np.float64)
        groups = fb.candidate_groups
        member = np.zeros((len(fb.names_), len(groups)))
        member[np.arange(len(fb.names_)), [groups.index(g) for g in fb.groups_]] = 1.0
        values = ((x - x0) * w) @ member
        base = np.full(len(x), float(x0 @ w) + self.intercept_)
        return Contributions(groups, values.astype(np.float32), base.astype(np.float32), "exact (linear)")

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)`` with the scaling, the weights and the intercept."""
        fb, w = self._fitted()
        fconf, arrays = fb.get_state()
        arrays["model.coef"] = w.copy()
        arrays["model.intercept"] = np.array([self.intercept_])
        return {"kind": "linear", "config": self.config.to_dict(), "features": fconf}, arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> LinearFusion:
        """Rebuild from :meth:`get_state` (scores are identical)."""
        if config.get("kind") != "linear":
            raise ConfigError(f"state is of kind {config.get('kind')!r}, expected 'linear'")
        model = cls(LinearFusionConfig.from_dict(config["config"]))
        model.features_ = FeatureBuilder.from_state(config["features"], arrays)
        try:
            model.coef_ = np.asarray(arrays["model.coef"], dtype=np.float64)
            model.intercept_ = float(np.asarray(arrays["model.intercept"])[0])
        except KeyError as e:
            raise ConfigError(f"linear fusion state lacks array {e}") from e
        if model.coef_.shape != (len(model.features_.names_),):
            raise ConfigError(
                f"linear fusion state has {model.coef_.shape} weights, layout needs {len(model.features_.names_)}"
            )
        return model
