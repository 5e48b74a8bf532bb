"""The data-cleaning pipeline: composable steps (normalise, language, quality, phrases, exact
and near dedup, PII, domain tags) over sharded records, with provenance for every kept record,
a reason for every removed one, resumable shard by shard.

    from lightseek.data.pipeline import load_pipeline_config, run_pipeline
    summary = run_pipeline(load_pipeline_config("recipes/pipeline_general.yaml"))

or ``lightseek data pipeline --config recipes/pipeline_general.yaml [--out DIR] [--overwrite]``.
"""

from lightseek.data.pipeline.config import PipelineConfig, load_pipeline_config
from lightseek.data.pipeline.runner import run_pipeline

__all__ = ["PipelineConfig", "load_pipeline_config", "run_pipeline"]
