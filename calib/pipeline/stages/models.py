"""Model stages: the classifier f (trained, or a user's own imported), the triplet embedding g and the
models the run's judges need (g2, the robust and the certified-Lipschitz embeddings)."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from calib import distributed as D
from calib.data import Dataset, Splits
from calib.data.split import stratified_indices
from calib.io import sha256_file
from calib.pipeline.config import RobustEmbeddingConfig, RunConfig
from calib.pipeline.stage import Stage, StageContext
from calib.runfolder import artefacts as A

log = logging.getLogger(__name__)


def second_split(ds: Dataset, splits: Splits, seed: int) -> tuple[Dataset, Dataset]:
    """Training data of the independent embedding g2: the training part re-split 85/15 with
    another seed. Never the calibration part (whose radii the judges measure) nor the test part
    (which is attacked and audited)."""
    pool = splits.train.indices
    tr, va = stratified_indices(ds.labels[pool], (0.85, 0.15), seed)
    return ds.subset(np.sort(pool[tr]), "train2"), ds.subset(np.sort(pool[va]), "validation2")


@dataclass(frozen=True)
class EmbeddingOptions:
    """The architecture and loss of a triplet embedding (:func:`calib.train.train_embedding`)."""

    dim: int = 64
    margin: float = 0.2
    miner: str = "semihard"
    arch: str | None = None
    width: int = 512
    depth: int = 3


@dataclass(frozen=True)
class GenerativeOptions:
    """The ``abs`` judge's class VAEs (:func:`calib.train.generative.train_abs`)."""

    latent: int = 8
    width: int = 16


@dataclass(frozen=True)
class TrainOptions:
    """One trained model, ``models/<stem>``.

    Attributes:
        stem: the artefact's name.
        epochs, seed, augment: optimisation (:class:`calib.train.TrainConfig`; device and progress
            come from the run, not the key).
        split_seed: recorded in the model, checked when a run reopens it.
        embedding: ``None`` for the classifier, else the embedding's architecture and loss.
        subset: train on g2's re-split of the training part (seed ``seed``).
        robust: train on adversarial anchors (the ``robust`` judge's embedding).
        generative: the ``abs`` judge's class VAEs instead (``embedding`` is then ``None``).
    """

    stem: str
    epochs: int
    seed: int
    split_seed: int
    augment: tuple[str, ...] = ()
    embedding: EmbeddingOptions | None = None
    subset: bool = False
    robust: RobustEmbeddingConfig | None = None
    generative: GenerativeOptions | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> dict[str, Any]:
        """The stage key's options: every field, without ``generative`` where it is ``None`` (so the key of
        every other model is what it was before the ``abs`` judge existed)."""
        d = asdict(self)
        if d["generative"] is None:
            d.pop("generative")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TrainOptions":
        tup = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
        emb = d.get("embedding")
        rob = d.get("robust")
        gen = d.get("generative")
        return cls(**{**{k: tup(v) for k, v in d.items()},
                      "embedding": None if emb is None else EmbeddingOptions(**emb),
                      "generative": None if gen is None else GenerativeOptions(**gen),
                      "robust": None if rob is None else RobustEmbeddingConfig(**{k: tup(v) for k, v in rob.items()})})


def train_model(ctx: StageContext, o: TrainOptions) -> dict[str, Any]:
    m = train(ctx, o, ctx.progress)  # every rank under torchrun; only this one (the leader) saves
    ctx.forget_models()
    saved = m.save(ctx.file(A.model(o.stem)[1]))
    return {"metrics": m.metrics, "weights_sha256": saved["weights_sha256"], "training_seconds": m.training["seconds"]}


def fit_model(folder: Any, o: TrainOptions, progress: bool = False) -> Any:
    """Train model ``o`` on ``folder``'s split (a :class:`~calib.runfolder.RunFolder`); the trained model."""
    from calib.train import TrainConfig, train_classifier, train_embedding

    from calib.distributed import rank_device

    t = TrainConfig(epochs=o.epochs, seed=o.seed, augment=o.augment, device=rank_device(folder.device),
                    progress=progress)
    ctx = folder
    s = ctx.splits
    if o.generative is not None:
        from calib.train.generative import train_abs

        return train_abs(s.train, t, validation=s.calibration, test=s.test, latent=o.generative.latent,
                         width=o.generative.width, split_seed=o.split_seed)
    if o.embedding is None:
        m = train_classifier(s.train, t, validation=s.calibration, test=s.test, split_seed=o.split_seed)
    else:
        e = o.embedding
        part = second_split(ctx.dataset, s, o.seed)[0] if o.subset else s.train
        kwargs: dict[str, Any] = {"dim": e.dim, "margin": e.margin, "miner": e.miner}
        if e.arch is not None:
            kwargs |= {"arch": e.arch, "width": e.width, "depth": e.depth}
        m = train_embedding(part, t, test=s.test, split_seed=o.seed if o.subset else o.split_seed,
                            adversarial=o.robust.mix() if o.robust is not None else None, **kwargs)
        if o.subset:
            m.data["train_parent_fingerprint"] = s.train.fingerprint
    return m


# ---- training on every torchrun rank (DistributedDataParallel) ---------------------------------------------
@D.task("train")
def _train_task(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from calib.runfolder import RunFolder

    if D.world().leader:
        return {}, {}  # the leader trains in :func:`train` (it keeps the model)
    try:
        folder = RunFolder.open(h["run"], device=D.rank_device(h["device"]))
        m = fit_model(folder, TrainOptions.from_json(h["options"]), progress=False)
        return {"weights_sha256": m.weights_sha256}, {}
    except Exception as exc:  # the leader waits inside DistributedDataParallel: end this rank, torchrun ends all
        import logging
        import os

        logging.getLogger(__name__).error("rank %d failed in training: %s: %s", D.world().rank,
                                          type(exc).__name__, exc)
        os._exit(1)


def train(folder: Any, options: TrainOptions, progress: bool) -> Any:
    """:func:`calib.pipeline.stages.models.fit_model` on every rank (DistributedDataParallel); the
    leader's trained model, checked to be every rank's (DistributedDataParallel keeps the replicas equal:
    different weights on some rank are a bug, not a user error)."""
    if not D.world().parallel:
        return fit_model(folder, options, progress=progress)
    D.broadcast_bytes(D.pack({"task": "train", "run": str(folder.path), "device": folder.device,
                              "options": options.to_json()}))
    try:
        model = fit_model(folder, options, progress=progress)
        mine = D.pack({"ok": True, "weights_sha256": model.weights_sha256})
    except Exception as exc:
        model, mine = None, D.pack({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
    results = [D.unpack(b)[0] for b in D.gather_bytes(mine)]
    bad = [(r, h["error"]) for r, h in enumerate(results) if not h.get("ok")]
    if bad:
        from calib.errors import CalibError

        raise CalibError(f"rank {bad[0][0]} of {D.world().size} failed in training: {bad[0][1]}")
    hashes = [h.get("weights_sha256") for h in results]
    if len(set(hashes)) != 1:
        raise AssertionError(f"{options.stem}: the ranks' replicas differ after training ({hashes})")
    return model


@dataclass(frozen=True)
class ExternalOptions:
    """A user's classifier: the factory, the weights file and the hashes of both (so an edited module or
    new weights re-import it)."""

    factory: str
    weights: str
    weights_sha256: str
    module_sha256: str | None


def import_classifier(ctx: StageContext, o: ExternalOptions) -> dict[str, Any]:
    """``--classifier``: checked, its clean accuracy measured on the test part, saved as the run's
    ``models/classifier`` (the same safetensors tensors, and a spec naming the factory and the sha256
    of its module file)."""
    from calib.models import save_model
    from calib.models.external import load_external, module_file
    from calib.models.infer import forward_batched

    ds, test = ctx.dataset, ctx.splits.test
    t0 = time.perf_counter()
    model = load_external(o.factory, o.weights, test.images, ds.num_classes)
    pred = forward_batched(model, test.images, device=ctx.device).argmax(1).numpy()
    acc = float((pred == test.labels).mean())
    src = module_file(o.factory)
    spec = {"kind": "external", "factory": o.factory, "module_file": str(src) if src else None,
            "module_sha256": o.module_sha256, "input_shape": list(ds.image_shape), "num_classes": ds.num_classes}
    metrics = {"test_accuracy": acc, "test_n": int(test.labels.size),
               "test_accuracy_per_class": [float((pred[test.labels == c] == c).mean()) for c in range(ds.num_classes)]}
    saved = save_model(model.cpu(), spec, ctx.file(A.model("classifier")[1]), classes=list(ds.class_names),
                       metrics=metrics, data={"external": True, "data_fingerprint": ds.fingerprint,
                                              "trained_on": "unknown to calib (a classifier of your own)"},
                       external={"weights_file": o.weights, "weights_file_sha256": o.weights_sha256})
    ctx.forget_models()
    log.info("classifier %s: clean accuracy %.4f on the %d test images", o.factory, acc, test.labels.size)
    if acc < 2.0 / ds.num_classes:  # a model that fits but does not know this data: say so, then audit it anyway
        log.warning("classifier %s: clean accuracy %.4f is near chance (1/%d); were its weights trained on this "
                    "data set and split?", o.factory, acc, ds.num_classes)
    return {"metrics": metrics, "weights_sha256": saved["weights_sha256"], "training_seconds": 0.0,
            "external": o.factory, "seconds": time.perf_counter() - t0}


#: the training code each model stage runs
CODE = {"classifier": ("calib.train.classifier",), "embedding": ("calib.train.embedding",),
        "embedding2": ("calib.train.embedding", second_split),
        "robust-embedding": ("calib.train.embedding", "calib.train.adversarial"),
        "lipschitz-embedding": ("calib.train.embedding", "calib.models.lipschitz"),
        "abs": ("calib.train.generative", "calib.models.vae")}
MODEL_STAGES = tuple(CODE)


def model_stages(config: RunConfig, n_train: int) -> list[Stage]:
    """f (or the user's classifier), g, and every model the measured judges need."""
    from calib.models.external import module_file

    emb_epochs, seed = config.epochs("embedding", n_train), config.seed
    emb = EmbeddingOptions(dim=config.embedding_dim, margin=config.margin, miner=config.miner)
    common = {"split_seed": seed, "augment": tuple(config.embedding_augment)}
    plans = {"embedding": TrainOptions("embedding", emb_epochs, seed, embedding=emb, **common)}
    needed = set(config.judge.models()) if config.semantic is not None or config.attack is not None else set()
    if "embedding2" in needed:
        plans["embedding2"] = TrainOptions("embedding2", emb_epochs, seed + 1, embedding=emb, subset=True, **common)
    if "robust-embedding" in needed:
        plans["robust-embedding"] = TrainOptions("robust-embedding", emb_epochs, seed, embedding=emb,
                                                 robust=config.robust_embedding, **common)
    if "lipschitz-embedding" in needed:
        lip = config.lipschitz
        plans["lipschitz-embedding"] = TrainOptions(
            "lipschitz-embedding", lip.epochs or emb_epochs, seed,
            embedding=EmbeddingOptions(dim=config.embedding_dim, margin=lip.margin, miner=config.miner,
                                       arch="lipschitz-mlp", width=lip.width, depth=lip.depth), **common)
    if "abs" in needed:
        a = config.abs
        plans["abs"] = TrainOptions("abs", a.epochs or 2 * emb_epochs, seed, generative=GenerativeOptions(a.latent, a.width),
                                    **common)
    if config.classifier is not None:
        src = module_file(config.classifier)
        first = Stage("classifier", import_classifier,
                      ExternalOptions(config.classifier, str(config.classifier_weights),
                                      sha256_file(config.classifier_weights), sha256_file(src) if src else None),
                      A.model("classifier"), code=("calib.models.external",))
    else:
        first = Stage("classifier", train_model,
                      TrainOptions("classifier", config.epochs("classifier", n_train), seed, split_seed=seed),
                      A.model("classifier"), code=CODE["classifier"], world_dependent=True)
    return [first] + [Stage(stem, train_model, o, A.model(stem), code=CODE[stem], world_dependent=True)
                      for stem, o in plans.items()]
