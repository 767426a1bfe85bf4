"""Offline A/B testing: chronological replay of an interaction log, and off-policy evaluation
of logged bandit feedback (IPS, SNIPS, doubly robust, rejection replay).

Names are loaded on first use, so ``import driftrank.replay`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftrank._lazy import lazy_exports

_EXPORTS = {
    # chronological replay
    "Configuration": "driftrank.replay._online",
    "OnlineRanker": "driftrank.replay._online",
    "StaticOnline": "driftrank.replay._online",
    "ReplayConfig": "driftrank.replay._replay",
    "ReplayReport": "driftrank.replay._report",
    "replay": "driftrank.replay._replay",
    # off-policy evaluation
    "BanditLog": "driftrank.replay._bandit",
    "load_obd": "driftrank.replay._bandit",
    "Estimate": "driftrank.replay._ope",
    "ips": "driftrank.replay._ope",
    "snips": "driftrank.replay._ope",
    "doubly_robust": "driftrank.replay._ope",
    "rejection_replay": "driftrank.replay._ope",
    "on_policy": "driftrank.replay._ope",
    "evaluate_policy": "driftrank.replay._ope",
    "RewardModel": "driftrank.replay._reward",
    "MeanRewardModel": "driftrank.replay._reward",
    "LogisticConfig": "driftrank.replay._reward",
    "LogisticRewardModel": "driftrank.replay._reward",
    "action_distribution": "driftrank.replay._policies",
    "ranking_policy": "driftrank.replay._policies",
    "softmax_policy": "driftrank.replay._policies",
    "uniform_policy": "driftrank.replay._policies",
    "run_obd_study": "driftrank.replay._obd_study",
}

__all__ = [
    "BanditLog",
    "Configuration",
    "Estimate",
    "LogisticConfig",
    "LogisticRewardModel",
    "MeanRewardModel",
    "OnlineRanker",
    "ReplayConfig",
    "ReplayReport",
    "RewardModel",
    "StaticOnline",
    "action_distribution",
    "doubly_robust",
    "evaluate_policy",
    "ips",
    "load_obd",
    "on_policy",
    "ranking_policy",
    "rejection_replay",
    "replay",
    "run_obd_study",
    "snips",
    "softmax_policy",
    "uniform_policy",
]

if TYPE_CHECKING:
    from driftrank.replay._bandit import BanditLog, load_obd
    from driftrank.replay._obd_study import run_obd_study
    from driftrank.replay._online import Configuration, OnlineRanker, StaticOnline
    from driftrank.replay._ope import (
        Estimate,
        doubly_robust,
        evaluate_policy,
        ips,
        on_policy,
        rejection_replay,
        snips,
    )
    from driftrank.replay._policies import action_distribution, ranking_policy, softmax_policy, uniform_policy
    from driftrank.replay._replay import ReplayConfig, replay
    from driftrank.replay._report import ReplayReport
    from driftrank.replay._reward import LogisticConfig, LogisticRewardModel, MeanRewardModel, RewardModel


__getattr__, __dir__ = lazy_exports("driftrank.replay", _EXPORTS, globals())
