"""Candidate generation: collaborative-filtering and other channels, merged for the next stages.

Channels (each a :class:`~driftrank.types.CandidateGenerator` and a :class:`~driftrank.types.Ranker`,
with ``observe``/``extend_items`` for online use and ``get_state``/``from_state`` for saving):
:class:`ALSChannel`, :class:`BPRChannel`, :class:`LightFMChannel` (factor models with
``fold_in``), :class:`CovisitChannel`, :class:`PopularityChannel`. :class:`CandidateMerger`
unions them into :class:`~driftrank.types.Candidates`. ``implicit`` and ``lightfm`` are imported
only when a model is fitted.
"""

from driftrank.retrieval._als import ALSChannel, ALSConfig
from driftrank.retrieval._base import Channel, Exclude
from driftrank.retrieval._bpr import BPRChannel, BPRConfig
from driftrank.retrieval._covisit import CovisitChannel, CovisitConfig
from driftrank.retrieval._factors import FactorChannel
from driftrank.retrieval._lightfm import LightFMChannel, LightFMConfig
from driftrank.retrieval._merge import CandidateMerger, MergerConfig, candidate_recall
from driftrank.retrieval._popularity import PopularityChannel, PopularityConfig, PopularityRanker

__all__ = [
    "ALSChannel",
    "ALSConfig",
    "BPRChannel",
    "BPRConfig",
    "CandidateMerger",
    "Channel",
    "CovisitChannel",
    "CovisitConfig",
    "Exclude",
    "FactorChannel",
    "LightFMChannel",
    "LightFMConfig",
    "MergerConfig",
    "PopularityChannel",
    "PopularityConfig",
    "PopularityRanker",
    "candidate_recall",
]
