"""The stages of ``calib run``, one module per step, in pipeline order: models, statistics, the
judges' radii (semantic), validation against people, budgets, attacks and their audits, the probe and
the embedding views, the report. Each module declares its stage's options (a frozen dataclass:
exactly what its computation reads), the computation, and a function building the stage from a
:class:`~calib.pipeline.config.RunConfig`."""
