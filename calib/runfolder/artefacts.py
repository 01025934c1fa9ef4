"""The name of every artefact in a run folder, in one place (paths relative to the folder).

Nothing else in calib spells these names: stages, commands, report sections and experiments ask
this module (or :class:`calib.runfolder.RunFolder`, which joins them to the folder's path).

=========================  ===============================================================
``run.json``               what the run was made from: dataset, split, options (:data:`RECORD`)
``summary.json``           the finished run's summary (:data:`SUMMARY`)
``stats.json/.npz``        distance statistics (:data:`STATS`)
``eps_table.json/.csv``    the epsilon table (:data:`EPS_TABLE`, :data:`EPS_TABLE_CSV`)
``per_sample_eps.npz``     per-sample budgets of the calibration points (:data:`PER_SAMPLE`)
``models/<stem>.*``        safetensors weights + JSON config (:func:`model`)
``models/judges/<n>.json`` judges fitted to people's labels (:func:`fitted_judge`)
``semantic/<judge>.*``     a judge's radii at the calibration points (:func:`semantic`) and its
                           relabel curves (:func:`relabel`)
``attacks/<name>.*``       adversarial examples (:func:`attack`)
``audit/<name>.*``         their audit (:func:`audit`)
``validation/``            judges against people (:data:`VALIDATION`)
``human/<session>.*``      labelling sessions (:func:`session`)
``human/perceptibility/``  perceptibility sessions: same/different pairs (:func:`pair_session`)
``human/perceptibility.json``  people's fitted per-class SSIM thresholds (:data:`PERCEPTIBILITY`)
``experiments/<name>.*``   background experiments (:func:`experiment`)
``probe.npz``              the class-mixing probe (:data:`PROBE`)
``projection.npz``         2-D views of the embedding (:data:`PROJECTION`)
``report.html``            the report (:data:`REPORT`)
``cache/<stage>.json``     stage manifests (:data:`CACHE`)
``logs/``                  internal-error tracebacks (:data:`LOGS`)
=========================  ===============================================================
"""
from __future__ import annotations

RECORD = "run.json"
SUMMARY = "summary.json"
STATS = "stats"  # stats.json + stats.npz
STATS_JSON = "stats.json"
STATS_NPZ = "stats.npz"
EPS_TABLE = "eps_table.json"
EPS_TABLE_CSV = "eps_table.csv"
PER_SAMPLE = "per_sample_eps.npz"
PROBE = "probe.npz"
PROJECTION = "projection.npz"
REPORT = "report.html"
MODELS = "models"
SEMANTIC = "semantic"
ATTACKS = "attacks"
AUDIT = "audit"
VALIDATION = "validation"
VALIDATION_JSON = "validation/validation.json"
VALIDATION_NPZ = "validation/validation.npz"
HUMAN = "human"
PAIR_SESSIONS = "human/perceptibility"
PERCEPTIBILITY = "human/perceptibility.json"
EXPERIMENTS = "experiments"
CACHE = "cache"
LOGS = "logs"
LOCK = ".calib.lock"


def model(stem: str) -> tuple[str, str]:
    """Weights and config of model ``stem`` (``classifier``, ``embedding``, ...)."""
    return f"{MODELS}/{stem}.safetensors", f"{MODELS}/{stem}.json"


def fitted_judge(name: str) -> str:
    """A judge fitted to people's labels (``calib judge fit``): ``models/judges/<name>.json``."""
    return f"{MODELS}/judges/{name}.json"


def semantic(judge: str) -> tuple[str, str]:
    """Arrays and document of a judge's radii."""
    return f"{SEMANTIC}/{judge}.npz", f"{SEMANTIC}/{judge}.json"


def relabel(judge: str, norm: str) -> str:
    """A judge's relabel curve: ``semantic/<judge>-relabel.json`` (L-inf), ``semantic/<judge>-relabel-l2.json``."""
    return f"{SEMANTIC}/{judge}-relabel.json" if norm == "linf" else f"{SEMANTIC}/{judge}-relabel-{norm}.json"


def attack(name: str) -> tuple[str, str]:
    """Arrays and summary of attack ``name``."""
    return f"{ATTACKS}/{name}.npz", f"{ATTACKS}/{name}.json"


def audit(name: str) -> tuple[str, str]:
    """Arrays and summary of the audit of attack ``name``."""
    return f"{AUDIT}/{name}.npz", f"{AUDIT}/{name}.json"


def experiment(name: str) -> tuple[str, str]:
    """Document and arrays of experiment ``name``."""
    return f"{EXPERIMENTS}/{name}.json", f"{EXPERIMENTS}/{name}.npz"


def experiment_model(stem: str) -> tuple[str, str]:
    """A model an experiment trained (``experiments/models/<stem>.*``)."""
    return f"{EXPERIMENTS}/{MODELS}/{stem}.safetensors", f"{EXPERIMENTS}/{MODELS}/{stem}.json"


def session(name: str) -> tuple[str, str]:
    """Answers and plan of labelling session ``name``."""
    return f"{HUMAN}/{name}.npz", f"{HUMAN}/{name}.plan"


def pair_session(name: str) -> tuple[str, str]:
    """Answers and plan of perceptibility session ``name`` (npz content; suffixes other than ``.npz``,
    so that loading ``RUN/human`` as human-labelled sets does not take them for relabelling sets)."""
    return f"{PAIR_SESSIONS}/{name}.answers", f"{PAIR_SESSIONS}/{name}.plan"


def manifest(stage: str) -> str:
    """The cache manifest of ``stage``."""
    return f"{CACHE}/{stage}.json"
