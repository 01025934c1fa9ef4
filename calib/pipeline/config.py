"""Options of ``calib run`` (:class:`RunConfig`) and the TOML/YAML config file that can replace flags.

A config file holds the same names as :class:`RunConfig`'s fields, with the nested sections
``[judge]`` (:class:`calib.judges.JudgeConfig`), ``[semantic]`` (:class:`SemanticConfig`),
``[attack]`` (:class:`AttackConfig`), ``[audit]`` (:class:`calib.audit.AuditConfig`),
``[robust_embedding]`` (:class:`RobustEmbeddingConfig`: the ``robust`` judge's embedding),
``[lipschitz]`` (:class:`LipschitzConfig`: the ``lipschitz`` judge's embedding) and ``[human]``
(:class:`HumanConfig`: human-labelled sets to hold out and validate against). Unknown keys are
errors, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from calib.audit import AuditConfig
from calib.data import DEFAULT_FRACTIONS
from calib.data.split import DEFAULT_MAX_CALIBRATION
from calib.errors import ConfigError
from calib.io import read_text
from calib.judges import JudgeConfig


def default_run_name(dataset: str, seed: int) -> str:
    stem = Path(dataset).stem if dataset.endswith(".npz") else dataset
    return f"{stem}-seed{seed}"


def default_run_dir(dataset: str, seed: int) -> Path:
    return Path("reports") / default_run_name(dataset, seed)


#: default training length, in samples seen (``epochs x training samples``), and its epoch range
SAMPLES_SEEN = 200_000
#: the embedding (the default judge's space) trains on more: on Fashion-MNIST 70k its knn precision@1
#: was 0.885 after 4 epochs and 0.905 after 8 (no shift augmentation; 2 cores, 4 and 8 minutes)
EMBEDDING_SAMPLES_SEEN = 450_000
EPOCH_RANGE = (3, 20)


def default_epochs(n_train: int, samples_seen: int = SAMPLES_SEEN) -> int:
    """Epochs when none are given: ``samples_seen / n_train`` rounded up, within ``EPOCH_RANGE``:
    20 on digits (1,257 training images) and MNIST 10k (8,500); on Fashion-MNIST 70k (58,000) 4 for
    the classifier and 8 for the embedding (:data:`EMBEDDING_SAMPLES_SEEN`), so a large data set
    trains in minutes on a CPU instead of an hour."""
    lo, hi = EPOCH_RANGE
    return int(min(hi, max(lo, -(-samples_seen // max(n_train, 1)))))


@dataclass(frozen=True)
class SemanticConfig:
    """Semantic budgets: per calibration point and norm of ``norms``, the judge's robustness radius
    (:mod:`calib.budgets.semantic`; ``method`` ``fmn``: a minimum-norm attack of ``fmn_steps`` over the
    untargeted margin and ``fmn_targets`` target classes, warm-started from the invariance witness; or
    ``bisection``, the reference: ``iters`` probes after a first attack on the whole box, each a PGD
    attack on the judge's margin with ``steps``, ``restarts``) and its
    invariance radius (:mod:`calib.budgets.invariance`: a grid toward the nearest training image of
    each other class, then ``invariance_iters`` bisection steps), and the relabel curves (targets
    among ``relabel_targets``: ``any`` other class, or ``tramer``, their hand-made digit map). With
    ``align`` the targets are first rotated and translated into the point's pose
    (:mod:`calib.budgets.alignment`, the best of a grid of 5 rotations x 25 shifts), as in Tramèr et
    al.'s attack."""

    norms: tuple[str, ...] = ("linf", "l2")
    method: str = "fmn"
    fmn_steps: int = 20
    fmn_targets: int = 2
    iters: int = 8
    steps: int = 10
    restarts: int = 1
    invariance_iters: int = 8
    relabel_targets: str = "any"
    align: bool = False

    def align_grid(self):
        """The alignment grid, or ``None`` without alignment."""
        from calib.budgets.alignment import AlignGrid

        return AlignGrid() if self.align else None

    def __post_init__(self) -> None:
        bad = [n for n in self.norms if n not in ("linf", "l2")]
        if bad or not self.norms:
            raise ConfigError(f"semantic norms must be linf and/or l2; got {list(self.norms)}")
        if self.iters < 0 or self.steps < 1 or self.restarts < 1 or self.invariance_iters < 0:
            raise ConfigError("semantic iters and invariance_iters must be >= 0, steps and restarts >= 1")
        if self.method not in ("fmn", "bisection"):
            raise ConfigError(f"semantic method must be fmn or bisection; got {self.method!r}")
        if self.fmn_steps < 1 or self.fmn_targets < 0:
            raise ConfigError("semantic fmn_steps must be >= 1 and fmn_targets >= 0")
        if self.relabel_targets not in ("any", "tramer"):
            raise ConfigError(f"semantic relabel_targets must be any or tramer; got {self.relabel_targets!r}")


@dataclass(frozen=True)
class HumanConfig:
    """Human-labelled sets (:mod:`calib.human.sets`: calib ``.npz`` files, Tramèr-layout ``.npy`` files
    or folders): their source images are kept in the test part, so no model trains on them, and
    every judge of the run is validated against them (``RUN/validation/``)."""

    sets: tuple[str, ...] = ()


@dataclass(frozen=True)
class LipschitzConfig:
    """The ``lipschitz`` judge's embedding (:mod:`calib.models.lipschitz`): hidden ``width`` x
    ``depth`` orthogonal layers with MaxMin, triplet ``margin`` on raw embeddings, ``epochs``
    (default: the run's embedding epochs)."""

    width: int = 512
    depth: int = 3
    margin: float = 1.0
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.width < 2 or self.width % 2 or self.depth < 1:
            raise ConfigError(f"lipschitz width must be even and >= 2, depth >= 1; got {self.width}, {self.depth}")
        if not self.margin > 0 or (self.epochs is not None and self.epochs < 1):
            raise ConfigError("lipschitz margin must be > 0 and epochs >= 1")


@dataclass(frozen=True)
class AbsConfig:
    """The ``abs`` judge's class models (:mod:`calib.models.vae`): one VAE per class with ``latent``
    dimensions and ``width`` channels, trained for ``epochs`` (default: twice the run's embedding epochs,
    since each class's model sees a tenth of the data: on MNIST 10k, clean accuracy 0.940 after 20
    epochs and 0.961 after 40)."""

    latent: int = 8
    width: int = 16
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.latent < 1 or self.width < 1 or (self.epochs is not None and self.epochs < 1):
            raise ConfigError(f"abs latent, width and epochs must be >= 1; got {self.latent}, {self.width}, "
                              f"{self.epochs}")


@dataclass(frozen=True)
class AttackConfig:
    """The three attacks of the headline, all on the test part.

    Attributes:
        norms: input norms attacked (``linf`` and/or ``l2``).
        global_eps: the customary global budget per norm (``linf`` 0.3, ``l2`` 2.0).
        steps, restarts: PGD settings of every attack (step = 2.5 eps / steps).
        embedding_cap: input cap (in each norm) of embedding-projected PGD, by default the global
            budget (``None`` = that; a number overrides it for every norm).
        embedding_step: absolute input step of embedding-projected PGD, relative to the cap
            (``2.5 cap / steps`` if ``None``).
        projection, newton_iters: embedding projection (:mod:`calib.attacks.embedding_pgd`): ``tangent``, a
            projected Newton step on the ball's linearisation at the previous iterate, then up to
            ``newton_iters`` Newton steps with fresh gradients for points still outside (higher success
            than ``newton`` with 2 steps at about half its cost; ``bench/pgd_throughput.py``).
        n: attack at most this many test examples (stratified by class, seeded; default 2,000: all of
            MNIST 10k's test part, a fifth of Fashion-MNIST's official 10k); ``None`` = all.
        probe_eps: the class-mixing probe's L-inf radius.
    """

    norms: tuple[str, ...] = ("linf",)
    global_eps: dict[str, float] = field(default_factory=lambda: {"linf": 0.3, "l2": 2.0})
    steps: int = 20
    restarts: int = 1
    embedding_cap: float | None = None
    embedding_step: float | None = None
    projection: str = "tangent"
    newton_iters: int = 2
    n: int | None = 2000
    probe_eps: float = 0.3

    def __post_init__(self) -> None:
        bad = [n for n in self.norms if n not in ("linf", "l2")]
        if bad or not self.norms:
            raise ConfigError(f"attack norms must be linf and/or l2; got {list(self.norms)}")
        missing = [n for n in self.norms if n not in self.global_eps]
        if missing:
            raise ConfigError(f"attack.global_eps has no value for {missing}")
        if self.steps < 1 or self.restarts < 1 or (self.n is not None and self.n < 1):
            raise ConfigError("attack steps, restarts and n must be >= 1")
        if self.projection not in ("bisection", "newton", "tangent"):
            raise ConfigError(f"attack.projection must be bisection, newton or tangent; got {self.projection!r}")


@dataclass(frozen=True)
class RobustEmbeddingConfig:
    """The ``robust`` judge's embedding: a robust triplet embedding (see
    :mod:`calib.train.adversarial`): clean-loss weight ``alpha``, anchors maximising the embedding
    shift in a ``norm`` ball of radius ``eps`` found by ``attack`` (``fgsm``/``pgd``, ``steps``)."""

    alpha: float = 0.5
    eps: float = 0.1
    norm: str = "linf"
    attack: str = "pgd"
    steps: int = 3

    def mix(self):
        from calib.train.adversarial import AdversarialMix

        return AdversarialMix(alpha=self.alpha, eps=float(self.eps), norm=self.norm, attack=self.attack,
                              steps=self.steps)


@dataclass(frozen=True)
class RunConfig:
    """Options of the main job; defaults are the README quick start on digits.

    ``threads``: CPU threads of torch, numba and faiss (default :data:`calib.device.DEFAULT_THREADS`;
    the count is recorded and is part of every tensor stage's cache key, since results differ in the
    last bits between thread counts).

    ``classifier`` / ``classifier_weights``: attack and audit a classifier of your own
    (``PACKAGE.MODULE:FACTORY`` and a safetensors file, :mod:`calib.models.external`) instead of
    training one; ``classifier_epochs`` then does not apply."""

    dataset: str = "digits"
    data_dir: str | None = None
    download: bool = False
    out: str | None = None
    name: str | None = None
    seed: int = 0
    device: str = "auto"
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    max_calibration: int | None = DEFAULT_MAX_CALIBRATION
    classifier: str | None = None
    classifier_weights: str | None = None
    classifier_epochs: int | None = None
    embedding_epochs: int | None = None
    embedding_dim: int = 64
    embedding_augment: tuple[str, ...] = ()
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    semantic_bound: str = "empirical"
    semantic_rule: str = "invariance"
    robust_embedding: RobustEmbeddingConfig = field(default_factory=RobustEmbeddingConfig)
    lipschitz: LipschitzConfig = field(default_factory=LipschitzConfig)
    abs: AbsConfig = field(default_factory=AbsConfig)
    human: HumanConfig = field(default_factory=HumanConfig)
    margin: float = 0.2
    miner: str = "semihard"
    q: float = 0.05
    s: float = 1.0
    rule: str = "quantile"
    pair: str = "calibration-train"
    matrix_modes: tuple[str, ...] = ("sampled", "exact")
    semantic: SemanticConfig | None = field(default_factory=SemanticConfig)
    attack: AttackConfig | None = field(default_factory=AttackConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    report: bool = True
    tsne_points: int = 2000
    gallery_per_class: int = 2
    progress: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        """Validate every option up front, so a bad one fails before anything is computed or written."""
        from calib.budgets import Policy
        from calib.stats import StatsConfig

        if any(e is not None and e < 1 for e in (self.classifier_epochs, self.embedding_epochs)):
            raise ConfigError("epochs must be >= 1")
        if (self.classifier is None) != (self.classifier_weights is None):
            raise ConfigError("a classifier of your own needs both --classifier PACKAGE.MODULE:FACTORY and "
                              "--classifier-weights FILE.safetensors")
        if self.classifier is not None:
            from calib.models.external import parse

            parse(self.classifier)
        if self.max_calibration is False:  # a config file's way to say "no cap"
            object.__setattr__(self, "max_calibration", None)
        if self.max_calibration is not None and self.max_calibration < 2:
            raise ConfigError(f"max_calibration must be >= 2; got {self.max_calibration}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0; got {self.seed}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1; got {self.threads}")
        if self.miner not in ("semihard", "hard", "all"):
            raise ConfigError(f"unknown miner {self.miner!r}; choose semihard, hard or all")
        if self.embedding_dim < 1 or not self.margin > 0:
            raise ConfigError("embedding_dim must be >= 1 and margin > 0")
        if self.tsne_points < 10 or self.gallery_per_class < 1:
            raise ConfigError("tsne_points must be >= 10 and gallery_per_class >= 1")
        Policy(q=self.q, s=self.s, rule=self.rule)
        self.robust_embedding.mix()  # validates
        from calib.train.augment import Augment

        Augment(tuple(self.embedding_augment))
        from calib.budgets.calibrate import SEMANTIC_RULES

        if self.semantic_rule not in SEMANTIC_RULES:
            raise ConfigError(f"unknown semantic rule {self.semantic_rule!r}; choose {' or '.join(SEMANTIC_RULES)}")
        if self.semantic_bound not in ("empirical", "certified"):
            raise ConfigError(f"unknown semantic bound {self.semantic_bound!r}; choose empirical or certified")
        if self.semantic_bound == "certified" and self.judge.name not in CERTIFIED_JUDGES and not (
                self.judge.name == "ensemble" and all(m in CERTIFIED_JUDGES for m in self.judge.members)):
            raise ConfigError(f"judge {self.judge.name!r} has no certificate, so its semantic budget has no certified "
                              f"bound; use --semantic-bound empirical or a certified judge "
                              f"({', '.join(CERTIFIED_JUDGES)})")
        StatsConfig(pairs=(self.pair,), matrix_modes=tuple(self.matrix_modes))

    def epochs(self, which: str, n_train: int) -> int:
        """Epochs of the ``classifier`` or ``embedding``: the option, or by default
        :func:`default_epochs` of the training part's size."""
        value = self.classifier_epochs if which == "classifier" else self.embedding_epochs
        seen = SAMPLES_SEEN if which == "classifier" else EMBEDDING_SAMPLES_SEEN
        return value if value is not None else default_epochs(n_train, seen)

    @classmethod
    def from_sources(cls, path: str | Path | None = None, flags: dict[str, Any] | None = None) -> "RunConfig":
        """The run's options from a config file (``.toml``/``.yaml``, optional) and flags given on the
        command line, which win: a flag for a nested section (``{"judge": {"name": "robust"}}``) is
        merged into the file's section key by key, ``false`` turns a section off.

        Raises:
            ConfigError: an unknown or invalid option, or a flag for a section turned off.
        """
        doc = read_config_file(path) if path is not None else {}
        for key, value in (flags or {}).items():
            if key in _NESTED and isinstance(value, dict):
                base = doc.get(key, {})
                if base is False:
                    raise ConfigError(f"{path}: [{key}] is turned off, so {', '.join(value)} cannot be set; drop "
                                      f"'{key} = false'")
                doc[key] = {**(base if isinstance(base, dict) else {}), **value}
            else:
                doc[key] = value
        return run_config_from_mapping(doc, str(path) if path is not None else "options")

    def run_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        return Path("reports") / (self.name or default_run_name(self.dataset, self.seed))


_NESTED = {"semantic": SemanticConfig, "attack": AttackConfig, "audit": AuditConfig,
           "robust_embedding": RobustEmbeddingConfig, "lipschitz": LipschitzConfig, "judge": JudgeConfig,
           "human": HumanConfig, "abs": AbsConfig}
#: sections that cannot be turned off with ``false``
_ALWAYS = ("audit", "judge", "robust_embedding", "lipschitz", "human", "abs")
#: judges with a Lipschitz certificate
CERTIFIED_JUDGES = ("lipschitz",)


def _coerce(cls: type, values: dict[str, Any], where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table/mapping; got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; known: {', '.join(names)}")
    kwargs = {k: _typed(v, str(names[k].type), f"{where}: {k}") for k, v in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


_SCALARS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _typed(value: Any, annotation: str, what: str) -> Any:
    """``value`` checked against a field's annotation (``int``, ``float | None``, ``tuple[str, ...]``,
    ``tuple[float, float, float]``, ``dict[str, float]``; others pass as they are): one clear line for
    a wrong type, before anything runs. A single string where a tuple of strings is expected is a
    one-element tuple (``sets = "folder"``), never its letters."""
    options = [a.strip() for a in annotation.split("|")]
    if value is None:
        if "None" in options:
            return None
        raise ConfigError(f"{what} must be given (not null)")
    kinds = [a for a in options if a != "None"]
    if len(kinds) != 1:
        return value
    kind = kinds[0]
    if kind in _SCALARS:
        if not (isinstance(value, _SCALARS[kind]) and (kind == "bool" or not isinstance(value, bool))):
            raise ConfigError(f"{what} must be {_NAMES[kind]}; got {value!r}")
        return value
    if kind.startswith("tuple["):
        inner = [a.strip() for a in kind[len("tuple["):-1].split(",")]
        if isinstance(value, str) and inner[0] == "str":
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{what} must be a list; got {value!r}")
        if inner[-1] != "...":
            if len(value) != len(inner):
                raise ConfigError(f"{what} must be a list of {len(inner)} values; got {len(value)}: {list(value)}")
            return tuple(_typed(v, t, f"{what}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
        return tuple(_typed(v, inner[0], f"{what}[{i}]") for i, v in enumerate(value))
    if kind.startswith("dict[") and isinstance(value, dict):
        key_t, val_t = (a.strip() for a in kind[len("dict["):-1].split(",", 1))
        return {_typed(k, key_t, what): _typed(v, val_t, f"{what}.{k}") for k, v in value.items()}
    return value


_NAMES = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false"}


def run_config_from_mapping(values: dict[str, Any], where: str = "config") -> RunConfig:
    """A :class:`RunConfig` from a plain mapping (nested sections as mappings; ``false`` turns
    ``semantic``/``attack`` off)."""
    values = dict(values)
    if values.get("max_calibration") is False:  # a config file's way to say "no cap"
        values["max_calibration"] = None
    for key, cls in _NESTED.items():
        if key in values:
            v = values[key]
            if v is False or v is None:
                if key in _ALWAYS:
                    raise ConfigError(f"{where}: [{key}] cannot be turned off")
                values[key] = None
            else:
                values[key] = _coerce(cls, v, f"{where} [{key}]")
    return _coerce(RunConfig, values, where)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a ``.toml`` or ``.yaml``/``.yml`` run config into a mapping (not yet validated)."""
    path = Path(path)
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"{path}: config files must end in .toml, .yaml or .yml")
    text = read_text(path, ConfigError, "config file")
    if path.suffix == ".toml":
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML ({exc})") from exc
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml is a declared dependency
            raise ImportError("YAML config files need PyYAML: pip install pyyaml") from exc
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    else:
        raise ConfigError(f"{path}: config files must end in .toml, .yaml or .yml")
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a run config must be a mapping of option names to values")
    return doc


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a config file; ``overrides`` (e.g. flags given on the command line) win."""
    doc = read_config_file(path) | (overrides or {})
    return run_config_from_mapping(doc, str(path))


def embedding_step(cfg: AttackConfig, norm: str, cap: float | None = None) -> float:
    """The input step of embedding-projected PGD: ``cfg.embedding_step`` or ``2.5 * cap / steps``, the cap
    being ``cap``, else ``cfg.embedding_cap``, else the global budget of ``norm``. Shared by ``calib run``
    and ``calib attack``."""
    if cfg.embedding_step is not None:
        return float(cfg.embedding_step)
    cap = cap if cap is not None else (cfg.embedding_cap if cfg.embedding_cap is not None else cfg.global_eps[norm])
    return 2.5 * float(cap) / cfg.steps


def attack_plan(cfg: AttackConfig, seed: int = 0) -> list[dict[str, Any]]:
    """The attacks of the headline: for each norm, PGD under the global eps, PGD under the table's
    per-class eps, the invariance examples at the per-class eps (toward the least-ink image of another
    class: the direction the semantic budget was computed in, for the audit and the labelling page),
    and embedding-projected PGD (embedding ball from the table, input cap = global eps), all seeded
    with ``seed``."""
    from calib.attacks.runner import AttackSpec

    plan = []
    for norm in cfg.norms:
        g = float(cfg.global_eps[norm])
        cap = float(cfg.embedding_cap) if cfg.embedding_cap is not None else g
        step = embedding_step(cfg, norm)
        plan += [
            {"name": f"pgd-global-{norm}", "budget": "global", "ball_space": "input",
             "spec": AttackSpec(attack="pgd", norm=norm, eps=g, steps=cfg.steps, restarts=cfg.restarts, seed=seed)},
            {"name": f"pgd-table-{norm}", "budget": "per-class", "ball_space": "input",
             "spec": AttackSpec(attack="pgd", norm=norm, eps=None, steps=cfg.steps, restarts=cfg.restarts,
                                seed=seed)},
            {"name": f"invariance-table-{norm}", "budget": "per-class invariance", "ball_space": "input",
             "spec": AttackSpec(attack="invariance", norm=norm, eps=None, seed=seed)},
            {"name": f"embedding-pgd-{norm}", "budget": "embedding", "ball_space": "embedding",
             "spec": AttackSpec(attack="embedding-pgd", norm=norm, eps=None, cap=cap, steps=cfg.steps,
                                restarts=cfg.restarts, step_size=step, method=cfg.projection,
                                newton_iters=cfg.newton_iters, seed=seed)},
        ]
    return plan
