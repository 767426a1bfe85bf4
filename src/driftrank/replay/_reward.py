"""Reward models for logged bandit feedback: predicted reward of every action at every slot."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np

from driftrank.errors import ConfigError, ModelFileError, NotFittedError
from driftrank.replay._bandit import BanditLog

__all__ = ["LogisticConfig", "LogisticRewardModel", "MeanRewardModel", "RewardModel"]


@runtime_checkable
class RewardModel(Protocol):
    """Predicts the expected reward of each action at each slot for the rounds of a log."""

    def fit(self, log: BanditLog) -> Self:
        """Learn from the logged (context, action, slot, reward) rounds; returns ``self``."""
        ...

    def predict(self, log: BanditLog) -> np.ndarray:
        """``float64[n_rounds, n_actions, n_positions]`` expected reward for each round's context."""
        ...


class MeanRewardModel:
    """Context-free: the mean reward of each (action, slot) cell, shrunk towards the slot's mean.

    ``q(a, p) = (sum of rewards in the cell + m * mean_p) / (rounds in the cell + m)`` with
    ``m = prior_strength``: rare cells (few rounds, with clicks at a fraction of a percent) fall
    back to the slot's rate instead of 0 or 1.
    """

    def __init__(self, prior_strength: float = 20.0) -> None:
        if not prior_strength >= 0:
            raise ConfigError(f"prior_strength must be non-negative, got {prior_strength}")
        self.prior_strength = float(prior_strength)
        self.table_: np.ndarray | None = None

    def fit(self, log: BanditLog) -> Self:
        """Tabulate the cell means."""
        k, p = log.n_actions, log.n_positions
        cell = log.actions * p + log.positions
        n = np.bincount(cell, minlength=k * p).reshape(k, p).astype(np.float64)
        s = np.bincount(cell, weights=log.rewards, minlength=k * p).reshape(k, p)
        slot_n = np.bincount(log.positions, minlength=p).astype(np.float64)
        slot_s = np.bincount(log.positions, weights=log.rewards, minlength=p)
        overall = float(log.rewards.mean()) if log.n_rounds else 0.0
        slot_mean = np.where(slot_n > 0, slot_s / np.maximum(slot_n, 1.0), overall)
        m = self.prior_strength
        den = n + m
        self.table_ = np.where(den > 0, (s + m * slot_mean[None, :]) / np.where(den > 0, den, 1.0), slot_mean)
        return self

    def predict(self, log: BanditLog) -> np.ndarray:
        """The table broadcast to every round, ``float64[n_rounds, n_actions, n_positions]``."""
        if self.table_ is None:
            raise NotFittedError("MeanRewardModel.predict called before fit")
        if self.table_.shape != (log.n_actions, log.n_positions):
            raise ValueError(
                f"fitted for {self.table_.shape} (actions, slots), log has {(log.n_actions, log.n_positions)}"
            )
        return np.broadcast_to(self.table_, (log.n_rounds, *self.table_.shape)).copy()

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``({"prior_strength"}, {"table": float64[n_actions, n_positions]})``."""
        if self.table_ is None:
            raise NotFittedError("MeanRewardModel.get_state called before fit")
        return {"prior_strength": self.prior_strength}, {"table": self.table_.copy()}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> MeanRewardModel:
        """Rebuild from :meth:`get_state` output."""
        try:
            model = cls(float(config["prior_strength"]))
            table = np.asarray(arrays["table"], dtype=np.float64)
        except KeyError as e:
            raise ModelFileError(f"MeanRewardModel state lacks {e.args[0]!r}") from None
        if table.ndim != 2:
            raise ModelFileError(f"MeanRewardModel table must be 2-d, got shape {table.shape}")
        model.table_ = table.copy()
        return model


@dataclass(frozen=True)
class LogisticConfig:
    """Settings of :class:`LogisticRewardModel`.

    Attributes:
        l2: L2 penalty on every weight but the intercept (loss is summed over rounds, so the
            penalty matters less as the log grows). Clicks are rare: keep it strong.
        cross: add user-feature × item-feature interactions (a ``[n_user_onehot,
            n_item_features]`` weight matrix), so different users can prefer different items.
        use_affinity: use the log's user-item affinity of the round's user with the action.
        max_iter: L-BFGS iterations.
    """

    l2: float = 10.0
    cross: bool = True
    use_affinity: bool = True
    max_iter: int = 300

    def __post_init__(self) -> None:
        if not self.l2 > 0:
            raise ConfigError(f"l2 must be positive, got {self.l2}")
        if not isinstance(self.max_iter, int) or self.max_iter <= 0:
            raise ConfigError(f"max_iter must be a positive integer, got {self.max_iter!r}")


class LogisticRewardModel:
    """Logistic click model on user features, item features, slot and affinity.

    ``logit(x, a, p) = b + u(x)·w_u + b_a + f_a·w_f + w_p[p] + w_aff·aff(x, a) + u(x)ᵀ C f_a``
    where ``u(x)`` is the one-hot user features, ``f_a`` the item's feature row and ``C`` the
    optional cross term. Fitted by L-BFGS on the logged rounds (penalised log-loss). Because
    slot enters additively, every slot ranks the items alike.
    """

    def __init__(self, config: LogisticConfig | None = None) -> None:
        self.config = config or LogisticConfig()
        self.params_: dict[str, np.ndarray] | None = None

    # The parameter vector is packed as [b, w_u, b_item, w_f, w_pos, w_aff, C.ravel()].
    def _shapes(self, n_u: int, k: int, d: int, p: int) -> list[tuple[str, tuple[int, ...]]]:
        return [
            ("b", (1,)),
            ("w_u", (n_u,)),
            ("b_item", (k,)),
            ("w_f", (d,)),
            ("w_pos", (p,)),
            ("w_aff", (1 if self.config.use_affinity else 0,)),
            ("C", (n_u, d) if self.config.cross else (0, 0)),
        ]

    def _objective(
        self, log: BanditLog
    ) -> tuple[
        Callable[[np.ndarray], tuple[float, np.ndarray]], Callable[[np.ndarray], dict[str, np.ndarray]], int
    ]:
        """``(loss_and_gradient(theta), unpack(theta), n_params)`` of the penalised log-loss on ``log``."""
        from scipy.special import expit

        cfg = self.config
        U = log.user_onehot()
        F = log.item_features
        n, n_u = U.shape
        k, d = F.shape
        p = log.n_positions
        a, pos, r = log.actions, log.positions, log.rewards
        aff = (
            log.affinities[np.arange(n), a].astype(np.float64)
            if cfg.use_affinity and log.affinities.shape[1]
            else np.zeros(n)
        )
        Fa = F[a]
        shapes = self._shapes(n_u, k, d, p)
        sizes = [int(np.prod(s)) for _, s in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

        def unpack(theta: np.ndarray) -> dict[str, np.ndarray]:
            return {
                name: theta[offsets[j] : offsets[j + 1]].reshape(shape)
                for j, (name, shape) in enumerate(shapes)
            }

        def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
            P = unpack(theta)
            z = P["b"][0] + U @ P["w_u"] + P["b_item"][a] + Fa @ P["w_f"] + P["w_pos"][pos]
            if cfg.use_affinity:
                z = z + P["w_aff"][0] * aff
            if cfg.cross:
                z = z + np.einsum("nd,nd->n", U @ P["C"], Fa)
            loss = float(np.sum(np.logaddexp(0.0, z) - r * z))
            g = expit(z) - r
            grads = {
                "b": np.array([g.sum()]),
                "w_u": U.T @ g,
                "b_item": np.bincount(a, weights=g, minlength=k),
                "w_f": Fa.T @ g,
                "w_pos": np.bincount(pos, weights=g, minlength=p).astype(np.float64),
                "w_aff": np.array([g @ aff]) if cfg.use_affinity else np.zeros(0),
                "C": U.T @ (g[:, None] * Fa) if cfg.cross else np.zeros((0, 0)),
            }
            flat = np.concatenate([grads[name].ravel() for name, _ in shapes])
            penal = theta.copy()
            penal[0] = 0.0  # the intercept is not penalised
            loss += 0.5 * cfg.l2 * float(penal @ penal)
            return loss, flat + cfg.l2 * penal

        return loss_grad, unpack, int(offsets[-1])

    def fit(self, log: BanditLog) -> Self:
        """Fit the weights on ``log``'s rounds."""
        from scipy.optimize import minimize
        from threadpoolctl import threadpool_limits

        loss_grad, unpack, n_params = self._objective(log)
        theta0 = np.zeros(n_params)
        rate = float(np.clip(log.rewards.mean(), 1e-6, 1 - 1e-6)) if log.n_rounds else 0.5
        theta0[0] = np.log(rate / (1 - rate))
        # The matrices are small: BLAS threads only add contention (10-20x slower on a busy machine).
        with threadpool_limits(1, "blas"):
            res = minimize(
                loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": self.config.max_iter}
            )
        self.params_ = {name: v.copy() for name, v in unpack(res.x).items()}
        return self

    def predict(self, log: BanditLog) -> np.ndarray:
        """``float64[n_rounds, n_actions, n_positions]`` click probabilities."""
        from scipy.special import expit

        P = self._fitted()
        U = log.user_onehot()
        F = log.item_features
        if U.shape[1] != len(P["w_u"]) or F.shape[1] != len(P["w_f"]) or F.shape[0] != len(P["b_item"]):
            raise ValueError(
                f"log {log.name!r} has {U.shape[1]} user one-hot columns and item features {F.shape}; "
                f"the model was fitted with {len(P['w_u'])} and ({len(P['b_item'])}, {len(P['w_f'])})"
            )
        z = P["b"][0] + (U @ P["w_u"])[:, None] + (P["b_item"] + F @ P["w_f"])[None, :]
        if self.config.use_affinity and log.affinities.shape[1]:
            z = z + P["w_aff"][0] * log.affinities.astype(np.float64)
        if self.config.cross:
            z = z + (U @ P["C"]) @ F.T
        return expit(z[:, :, None] + P["w_pos"][None, None, :])

    def _fitted(self) -> dict[str, np.ndarray]:
        if self.params_ is None:
            raise NotFittedError("LogisticRewardModel used before fit")
        return self.params_

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config dict, {"b", "w_u", "b_item", "w_f", "w_pos", "w_aff", "C"})``."""
        P = self._fitted()
        return asdict(self.config), {k: v.copy() for k, v in P.items()}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> LogisticRewardModel:
        """Rebuild from :meth:`get_state` output."""
        model = cls(LogisticConfig(**config))
        names = ("b", "w_u", "b_item", "w_f", "w_pos", "w_aff", "C")
        missing = [x for x in names if x not in arrays]
        if missing:
            raise ModelFileError(f"LogisticRewardModel state lacks {missing}")
        model.params_ = {x: np.asarray(arrays[x], dtype=np.float64).copy() for x in names}
        return model
