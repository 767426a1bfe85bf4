"""The learnable fusion model: a user-gated linear scorer over signal groups plus a small MLP.

Training uses torch (imported inside :meth:`FusionModel.fit` only); scoring, explaining and
loading run in numpy, so a loaded model serves without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Self

import numpy as np

from driftrank._linalg import matmul_t
from driftrank.errors import ConfigError, DataError, NotFittedError
from driftrank.fusion._features import FeatureBuilder, FeatureConfig, FeatureMatrix
from driftrank.fusion._input import Contributions, FusionInput

__all__ = ["FitReport", "FusionConfig", "FusionModel"]

_CHUNK = 65536  # candidate rows per numpy block: bounds the float64 temporaries to a few MB


@dataclass(frozen=True)
class FusionConfig:
    """Configuration of :class:`FusionModel`.

    Attributes:
        features: how raw signals become features (see :class:`FeatureConfig`).
        gate_hidden: hidden units of the gate network (user features -> softmax over signal
            groups); 0 = a linear gate. A few units let the gate bend (e.g. very light *and*
            very heavy users trusting text).
        mlp_hidden: hidden ReLU units of the MLP over all candidate and user features whose
            output is added to the gated linear score; 0 = none (the model is then exactly a
            per-user weighted linear mix). One hidden layer keeps attributions exact.
        learning_rate: Adam step size.
        weight_decay: decoupled L2 (AdamW) on every weight; keeps features that are rare in
            the validation step (e.g. "missing" indicators) near zero.
        batch_users: users (each with all their candidates) per optimizer step.
        max_epochs: upper bound on passes over the training users.
        patience: epochs without a better held-out loss before stopping; the best epoch's
            weights are kept.
        valid_share: share of the users with a usable target held out for early stopping
            (0 = none: train ``max_epochs`` epochs and keep the last weights).
        seed: seeds weight init, the held-out split and the batch order (same seed, same model).
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    gate_hidden: int = 16
    mlp_hidden: int = 32
    learning_rate: float = 0.01
    weight_decay: float = 1e-4
    batch_users: int = 128
    max_epochs: int = 60
    patience: int = 5
    valid_share: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.features, FeatureConfig):
            raise ConfigError(f"features must be a FeatureConfig, got {type(self.features).__name__}")
        for name in ("gate_hidden", "mlp_hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        for name in ("batch_users", "max_epochs", "patience"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.learning_rate, int | float) and self.learning_rate > 0):
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.valid_share, int | float) and 0 <= self.valid_share < 1):
            raise ConfigError(f"valid_share must be in [0, 1), got {self.valid_share!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        d = asdict(self)
        d["features"] = self.features.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FusionConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["features"] = FeatureConfig.from_dict(d.get("features", {}))
        return cls(**d)


@dataclass(frozen=True)
class FitReport:
    """What :meth:`FusionModel.fit` did.

    ``n_users`` in the batch; ``n_no_target`` had no target (-1); ``n_target_missing`` had a
    target that was not among their candidates (skipped: nothing to learn from them; this is
    the retrieval's miss rate); ``n_train``/``n_valid`` users were trained on / held out.
    Per epoch: ``train_loss`` (mean listwise cross-entropy), ``valid_loss`` and
    ``valid_ndcg10`` (NDCG@10 within the candidates of held-out users). ``best_epoch`` is
    1-based; ``seconds`` is wall time.
    """

    n_users: int
    n_no_target: int
    n_target_missing: int
    n_train: int
    n_valid: int
    epochs: int
    best_epoch: int
    train_loss: tuple[float, ...]
    valid_loss: tuple[float, ...]
    valid_ndcg10: tuple[float, ...]
    seconds: float


def _relu_path_fraction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of ``t in [0, 1]`` where ``a + t * b > 0`` (elementwise, closed form)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = -a / b
        frac = np.where(b > 0, np.clip(1.0 - cross, 0.0, 1.0), np.clip(cross, 0.0, 1.0))
    return np.where(b == 0, (a > 0).astype(np.float64), frac)


def _group_index(fb: FeatureBuilder) -> np.ndarray:
    """``int64[n_features]``: the gate column (candidate-level group) of each feature."""
    pos = {g: i for i, g in enumerate(fb.candidate_groups)}
    return np.array([pos[g] for g in fb.groups_], dtype=np.int64)


class FusionModel:
    """Scores every candidate from its signals, weighting signal groups per user.

    ``score = sum_g G * gate_g(u) * sum_{f in g} w_f x_f + b + mlp([x, u])`` where ``x`` are
    the candidate's scaled features (see :class:`FeatureBuilder`), ``u`` the user's (history
    length, time since the last event, ...), ``gate(u)`` a softmax over the ``G`` candidate-level
    signal groups (so heavy users can lean on CF channels and new users on text signals) and
    ``mlp`` one hidden ReLU layer for interactions. Trained with a listwise loss: softmax
    cross-entropy over each user's candidates, the held-out target being the positive.

    Contributions (:meth:`explain`) are differences from the all-missing input (every signal
    absent, see :meth:`FeatureBuilder.baseline`): exact for the gated linear part (the gate is
    evaluated at the user's real features, so its effect is inside each group's share and in
    ``base``), and integrated gradients for the MLP, computed in closed form along the straight
    path (a one-hidden-layer ReLU net is piecewise linear on it), so they are exact too and
    ``base + sum(contributions) == score``.
    """

    def __init__(self, config: FusionConfig | None = None) -> None:
        self.config = config or FusionConfig()
        self.features_: FeatureBuilder | None = None
        self.params_: dict[str, np.ndarray] | None = None
        self.report_: FitReport | None = None
        # (params, features, constants) of explain() for the current weights
        self._explain_cache: tuple[Any, Any, tuple[Any, ...]] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def gated_groups(self) -> tuple[str, ...]:
        """The candidate-level signal groups the gate weighs, in gate order."""
        return self._fb().candidate_groups

    def _fb(self) -> FeatureBuilder:
        if self.features_ is None or self.params_ is None:
            raise NotFittedError("FusionModel used before fit")
        return self.features_

    def _group_index(self) -> np.ndarray:
        return _group_index(self._fb())

    # ------------------------------------------------------------------ fit
    def fit(self, inputs: FusionInput, targets: np.ndarray) -> Self:
        """Learn scaling and weights from held-out targets.

        ``targets: int[n_users]`` is the held-out item of each user of ``inputs`` (in batch
        order), -1 for none. Users whose target is not among their candidates are skipped and
        counted in :attr:`report_`. Needs at least 2 users with a usable target.
        """
        from driftrank.fusion._train import train_gated

        if not isinstance(inputs, FusionInput):
            raise DataError(f"inputs must be a FusionInput, got {type(inputs).__name__}")
        fb = FeatureBuilder(self.config.features).fit(inputs)
        if not fb.names_ and not fb.user_names_:
            raise DataError("fusion needs at least one signal; the input has none")
        fm = fb.transform(inputs)
        params, report = train_gated(self.config, fm, inputs.candidates, targets, _group_index(fb))
        # set only now, so a failed fit never leaves a half-fitted model behind
        self.features_ = fb
        self.params_ = params
        self.report_ = report
        return self

    # ------------------------------------------------------------------ numpy forward
    def _gate(self, u: np.ndarray) -> np.ndarray:
        """``float64[n_users, G]`` softmax gate per user."""
        p = self.params_
        assert p is not None
        h = u.astype(np.float64)
        if "gate_w1" in p:
            h = np.tanh(matmul_t(h, p["gate_w1"].astype(np.float64)) + p["gate_b1"])
        logits = matmul_t(h, p["gate_w2"].astype(np.float64)) + p["gate_b2"]
        logits -= logits.max(axis=1, keepdims=True) if logits.shape[1] else 0.0
        e = np.exp(logits)
        return np.asarray(e / e.sum(axis=1, keepdims=True)) if e.shape[1] else e

    def _linear_weights(self, fm: FeatureMatrix) -> np.ndarray:
        """``float64[n_users, F]``: each user's effective linear weight per feature."""
        p = self.params_
        assert p is not None
        gidx = self._group_index()
        g = self._gate(fm.u)
        n_groups = g.shape[1]
        return np.asarray(n_groups * g[:, gidx] * p["lin_w"].astype(np.float64))

    def _mlp_user(self, u: np.ndarray) -> np.ndarray:
        """The user half of the MLP's first layer plus its bias, per user: ``[n_users, H]``."""
        p = self.params_
        assert p is not None
        f = len(p["lin_w"])
        return np.asarray(matmul_t(u, p["mlp_w1"][:, f:].astype(np.float64)) + p["mlp_b1"])

    def _forward(self, fm: FeatureMatrix) -> np.ndarray:
        """float32 scores of every row of ``fm``.

        Computed in float64 and rounded once: BLAS kernels sum rows at the edge of a block in
        another order than the rest, which in float32 would let a candidate's score change in
        the last bit with its position in the batch (batch != single).
        """
        p = self.params_
        assert p is not None
        wu = self._linear_weights(fm)
        f = len(p["lin_w"])
        out = np.empty(len(fm.x), dtype=np.float32)
        has_mlp = "mlp_w1" in p
        if has_mlp:
            uh = self._mlp_user(fm.u.astype(np.float64))
            w1x = p["mlp_w1"][:, :f].astype(np.float64)
            w2 = p["mlp_w2"].astype(np.float64).reshape(1, -1)
        for s in range(0, len(fm.x), _CHUNK):
            x = fm.x[s : s + _CHUNK].astype(np.float64)
            ur = fm.user_row[s : s + _CHUNK]
            v = np.einsum("rf,rf->r", x, wu[ur]) + float(p["lin_b"][0])
            if has_mlp:
                h = matmul_t(x, w1x)
                h += uh[ur]
                np.maximum(h, 0.0, out=h)
                v += matmul_t(h, w2)[:, 0] + float(p["mlp_b2"][0])
            out[s : s + _CHUNK] = v
        return out

    def score(self, inputs: FusionInput) -> np.ndarray:
        """``float32[m]`` fused score of every candidate row (higher is better)."""
        fb = self._fb()
        return self._forward(fb.transform(inputs))

    def gate(self, inputs: FusionInput) -> tuple[tuple[str, ...], np.ndarray]:
        """The gate per user of the batch: ``(groups, float32[n_users, G])``, rows sum to 1.

        A share above ``1 / G`` means the user's score leans on that group more than average.
        """
        fb = self._fb()
        fm = fb.transform(inputs, rows=np.zeros(0, dtype=np.int64))
        return fb.candidate_groups, self._gate(fm.u).astype(np.float32)

    def explain(self, inputs: FusionInput, rows: np.ndarray | None = None) -> Contributions:
        """Per-group contributions to the scores of candidate ``rows: int[r]`` (default all).

        Groups are the candidate-level groups then the user groups; see the class docstring
        for the attribution. ``base`` is the score the candidate would get with every signal
        missing (it depends on the user through the gate).
        """
        fb = self._fb()
        p = self.params_
        assert p is not None
        fm = fb.transform(inputs, rows)
        groups, gidx, member, x0, u0, pre0, mlp0 = self._explain_constants(fb, p)
        wu = self._linear_weights(fm)
        n = len(fm.x)
        values = np.zeros((n, len(groups)), dtype=np.float64)
        base = np.empty(n, dtype=np.float64)
        if "mlp_w1" in p:
            w1 = p["mlp_w1"].astype(np.float64)
            w2 = p["mlp_w2"].astype(np.float64)
        for s in range(0, n, _CHUNK):
            x = fm.x[s : s + _CHUNK].astype(np.float64)
            ur = fm.user_row[s : s + _CHUNK]
            w = wu[ur]
            dx = x - x0
            values[s : s + _CHUNK] = matmul_t(dx * w, member[: len(gidx)].T)
            base[s : s + _CHUNK] = (x0 * w).sum(axis=1) + float(p["lin_b"][0]) + mlp0
            if "mlp_w1" in p:
                du = fm.u[ur].astype(np.float64) - u0
                b = matmul_t(dx, w1[:, : x.shape[1]]) + matmul_t(du, w1[:, x.shape[1] :])
                frac = _relu_path_fraction(pre0[None, :], b)
                grad = matmul_t(frac * w2, w1.T)  # path-averaged gradient, [rows, F + U]
                ig = np.concatenate([dx, du], axis=1) * grad
                values[s : s + _CHUNK] += matmul_t(ig, member.T)
        return Contributions(
            groups,
            values.astype(np.float32),
            base.astype(np.float32),
            "difference from all-missing input: exact for the gated linear part, "
            "closed-form integrated gradients for the MLP",
        )

    def _explain_constants(self, fb: FeatureBuilder, p: dict[str, np.ndarray]) -> tuple[Any, ...]:
        """What :meth:`explain` needs besides the rows, fixed by the fitted weights: computed on
        the first call after a fit or load (a tenth of a one-user request otherwise)."""
        hit = self._explain_cache
        if hit is not None and hit[0] is p and hit[1] is fb:
            return hit[2]  # type: ignore[no-any-return]
        x0, u0 = (a.astype(np.float64) for a in fb.baseline())
        cgroups = fb.candidate_groups
        ugroups = fb.user_group_names
        groups = cgroups + ugroups
        gidx = self._group_index()
        upos = {g: i for i, g in enumerate(ugroups)}
        uidx = np.array([len(cgroups) + upos[g] for g in fb.user_groups_], dtype=np.int64)
        # member[f, g] = 1 when feature f (candidate features, then user features) is in group g
        member = np.zeros((len(gidx) + len(uidx), len(groups)))
        member[np.arange(len(gidx) + len(uidx)), np.concatenate([gidx, uidx])] = 1.0
        pre0, mlp0 = None, 0.0
        if "mlp_w1" in p:
            pre0 = x0 @ p["mlp_w1"][:, : len(x0)].T.astype(np.float64) + self._mlp_user(u0[None, :])[0]
            mlp0 = float(np.maximum(pre0, 0.0) @ p["mlp_w2"] + p["mlp_b2"][0])
        out = (groups, gidx, member, x0, u0, pre0, mlp0)
        self._explain_cache = (p, fb, out)
        return out

    # ------------------------------------------------------------------ state
    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(config, arrays)``: JSON-able config and the scaling plus every weight as numpy
        (the torch ``state_dict`` names under ``model.``)."""
        fb = self._fb()
        assert self.params_ is not None
        fconf, arrays = fb.get_state()
        config = {"kind": "gated", "config": self.config.to_dict(), "features": fconf}
        arrays.update({f"model.{k}": v.copy() for k, v in self.params_.items()})
        return config, arrays

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> FusionModel:
        """Rebuild a fitted model from :meth:`get_state` (scores are identical)."""
        if config.get("kind") != "gated":
            raise ConfigError(f"state is of kind {config.get('kind')!r}, expected 'gated'")
        model = cls(FusionConfig.from_dict(config["config"]))
        model.features_ = FeatureBuilder.from_state(config["features"], arrays)
        model.params_ = {
            k[len("model.") :]: np.asarray(v, dtype=np.float32)
            for k, v in arrays.items()
            if k.startswith("model.")
        }
        need = {"lin_w", "lin_b", "gate_w2", "gate_b2"}
        if not need <= set(model.params_):
            raise ConfigError(f"fusion state lacks arrays {sorted(need - set(model.params_))}")
        f = len(model.features_.names_)
        if model.params_["lin_w"].shape != (f,):
            raise ConfigError(
                f"fusion state has {model.params_['lin_w'].shape} linear weights, layout needs {f}"
            )
        return model
