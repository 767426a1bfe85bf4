"""Implicit-feedback ALS (the ``implicit`` library) as a retrieval channel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from driftrank.data import Dataset
from driftrank.errors import ConfigError
from driftrank.retrieval._common import check_int, check_name, check_nonnegative, check_positive
from driftrank.retrieval._factors import FactorChannel

__all__ = ["ALSChannel", "ALSConfig"]


@dataclass(frozen=True)
class ALSConfig:
    """Settings of :class:`ALSChannel` (defaults chosen on the ml-100k validation split).

    Attributes:
        factors: length of the user/item vectors.
        regularization: ridge term λ of both half-steps and of fold-in (> 0).
        alpha: confidence of an observed item is ``1 + alpha * W`` (W = its decayed event weight).
        iterations: ALS sweeps over users and items.
        half_life_days: an event's weight halves for every ``half_life_days`` between it and the
            user's newest event; ``None`` weighs every event 1.
        use_cg: conjugate-gradient half-steps in training (faster, approximate); the final user
            vectors are exact least-squares solves either way.
        num_threads: threads for implicit's training (``0`` = all cores; 1 keeps runs reproducible
            and is what the tests use).
        random_state: seed of the factor initialisation.
        name: the channel's name (its column in merged candidates).
    """

    factors: int = 128
    regularization: float = 15.0
    alpha: float = 2.0
    iterations: int = 15
    half_life_days: float | None = 0.25
    use_cg: bool = True
    num_threads: int = 1
    random_state: int = 0
    name: str = "als"

    def __post_init__(self) -> None:
        check_int("factors", self.factors)
        check_positive("regularization", self.regularization)
        check_nonnegative("alpha", self.alpha)
        check_int("iterations", self.iterations)
        check_positive("half_life_days", self.half_life_days, allow_none=True)
        if not isinstance(self.use_cg, bool):
            raise ConfigError(f"use_cg must be a bool, got {self.use_cg!r}")
        check_int("num_threads", self.num_threads, lo=0)
        check_int("random_state", self.random_state, lo=0)
        check_name(self.name)


class ALSChannel(FactorChannel):
    """Alternating least squares on implicit feedback (Hu, Koren & Volinsky 2008) via ``implicit``.

    Confidence ``1 + alpha * W_ui`` where ``W_ui`` sums the user's events on the item, each
    weighted ``2^(-age/half_life)`` by its age relative to the user's newest event. Serving
    vectors are exact fold-ins on the trained item factors (one final Cholesky half-step), so
    :meth:`fold_in` of a training user's history reproduces their vector.

    Example::

        als = ALSChannel(ALSConfig(factors=64)).fit(train)
        cands = als.candidates(np.array([0, 1]), 200, exclude="seen")
    """

    config_type = ALSConfig
    config: ALSConfig

    def __init__(self, config: ALSConfig | None = None) -> None:
        super().__init__(config or ALSConfig())

    def _fold_params(self) -> tuple[float, float]:
        return self.config.regularization, self.config.alpha

    def confidence(self, dataset: Dataset, weights: np.ndarray | None = None) -> sp.csr_matrix:
        """``float32[n_users, n_items]`` CSR of confidences ``1 + alpha * W`` (what ALS fits);
        ``weights`` default to :meth:`event_weights`."""
        if weights is None:
            weights = self.event_weights(dataset)
        w = sp.csr_matrix(
            (np.asarray(weights, dtype=np.float64), (dataset.user_index, dataset.item_index)),
            shape=(dataset.n_users, dataset.n_items),
        )
        w.sum_duplicates()
        w.data = 1.0 + self.config.alpha * w.data
        return w.astype(np.float32)

    def _train(self, dataset: Dataset, weights: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        cfg = self.config
        conf = self.confidence(dataset, weights)
        # Import before limiting: threadpoolctl only limits the BLAS libraries already loaded.
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(
                factors=cfg.factors,
                regularization=cfg.regularization,
                alpha=1.0,  # the confidence matrix already holds 1 + alpha * W
                iterations=cfg.iterations,
                use_cg=cfg.use_cg,
                num_threads=cfg.num_threads,
                random_state=cfg.random_state,
                dtype=np.float32,
            )
            model.fit(conf, show_progress=False)
        self.implicit_model_ = model
        return np.asarray(model.item_factors, dtype=np.float32)
