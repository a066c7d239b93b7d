"""The reference retail forecast pipeline (DESIGN.md section 5).

A synthetic retail database (:mod:`hafen.pipeline.synth`), extracted into datasets, denormalized,
reshuffled by store, forecast per store with gradient boosting, written back as a dataset, and
summarized. ``hafen demo`` runs it on embedded defaults; ``hafen run --config pipeline.toml`` on
real parts. On a database filled through the ingest API, runs are incremental
(:mod:`hafen.pipeline._incremental`).
"""

from __future__ import annotations

from hafen.pipeline._config import DB_LIMIT, PipelineConfig, SynthParams, load_config
from hafen.pipeline._model import ModelParams
from hafen.pipeline._run import PipelineResult, StageReport, demo, demo_config, run_pipeline
from hafen.pipeline._summary import print_summary, summary_dict

__all__ = [
    "DB_LIMIT",
    "ModelParams",
    "PipelineConfig",
    "PipelineResult",
    "StageReport",
    "SynthParams",
    "demo",
    "demo_config",
    "load_config",
    "print_summary",
    "run_pipeline",
    "summary_dict",
]
