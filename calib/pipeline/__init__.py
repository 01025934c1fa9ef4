"""The main job (``calib run``): its options (:mod:`calib.pipeline.config`), the stage type and
cache (:mod:`calib.pipeline.stage`, :mod:`calib.pipeline.cache`), one module per stage
(:mod:`calib.pipeline.stages`), the graph and its walk (:mod:`calib.pipeline.run`), and the library
side of the single-stage commands (:mod:`calib.pipeline.commands`, :mod:`calib.pipeline.imported`)."""
from calib.pipeline.cache import StageCache, StageRecord, stage_key
from calib.pipeline.config import (AttackConfig, LipschitzConfig, RobustEmbeddingConfig, RunConfig, SemanticConfig,
                                   attack_plan, default_run_dir, load_run_config, read_config_file,
                                   run_config_from_mapping)
from calib.pipeline.run import build_stages, run
from calib.pipeline.stage import Stage, StageContext
from calib.pipeline.stages.models import second_split

__all__ = ["StageCache", "StageRecord", "stage_key", "AttackConfig", "LipschitzConfig", "RobustEmbeddingConfig",
           "RunConfig", "SemanticConfig", "default_run_dir", "load_run_config", "read_config_file",
           "run_config_from_mapping", "attack_plan", "run", "build_stages", "Stage", "StageContext",
           "second_split"]
