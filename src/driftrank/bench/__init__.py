"""The benchmark harness: named pipelines, one protocol, results with confidence intervals."""

from driftrank.bench._harness import BenchResult, candidate_recall, machine_info, prepare_split, run_benchmark
from driftrank.bench._pipelines import PipelineSpec, available, build_pipeline, register_pipeline

__all__ = [
    "BenchResult",
    "PipelineSpec",
    "available",
    "build_pipeline",
    "candidate_recall",
    "machine_info",
    "prepare_split",
    "register_pipeline",
    "run_benchmark",
]
