"""The main job (``calib run``) and the stage functions the single-stage commands share."""
from calib.pipeline.cache import StageCache, StageRecord, stage_key
from calib.pipeline.config import (AttackConfig, LipschitzConfig, RobustEmbeddingConfig, RunConfig, SemanticConfig,
                                   attack_plan, default_run_dir, load_run_config, read_config_file,
                                   run_config_from_mapping)
from calib.pipeline.lock import RunFolderLocked, RunLock
from calib.pipeline.run import run, second_split
from calib.pipeline.stages import (budgets_stage, check_model_data, query_part, run_judge, semantic_radii,
                                   semantic_table, stats_stage)

__all__ = ["StageCache", "StageRecord", "stage_key", "AttackConfig", "LipschitzConfig", "RobustEmbeddingConfig",
           "RunConfig", "SemanticConfig", "default_run_dir", "load_run_config", "read_config_file",
           "run_config_from_mapping", "RunFolderLocked", "RunLock", "attack_plan", "run",
           "second_split", "budgets_stage", "check_model_data", "query_part", "run_judge", "semantic_radii",
           "semantic_table", "stats_stage"]
