"""The ``abs`` judge: analysis by synthesis (Schott et al. 2019).

One VAE per class (:class:`calib.models.vae.ClassVAEs`); the label is the class whose model explains
the image best, ``argmax_c ELBO_c(x)``, and the margin of class y is ``ELBO_y(x) - max_{c != y}
ELBO_c(x)`` in nats: differentiable, so the audit, the semantic radii (FMN's targeted rows included)
and the relabel curves run on it like on any other judge. No certificate.

A generative judge has to *explain* the image with the strokes its class model knows; a discriminative
net can be moved by features no person sees. Whether that makes it agree with people better is
measured (``calib validate``), not assumed.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from calib.judges.base import Judge
from calib.judges.classifier import ClassifierJudge


class AbsJudge(ClassifierJudge):
    """Label ``argmax ELBO``; margin ``ELBO_y - max_{c != y} ELBO_c`` (nats): the classifier judge's
    rule over the class models' ELBOs instead of f's logits.

    Args:
        model: the class VAEs, (N, C, H, W) in [0,1] -> (N, K) ELBOs.
        num_classes: K.
        weights_sha256: provenance of the VAEs' weights.
    """

    kind = "abs"

    def __init__(self, model: nn.Module, num_classes: int, *, name: str = "abs",
                 weights_sha256: str | None = None) -> None:
        super().__init__(model, num_classes, name=name, weights_sha256=weights_sha256)

    def describe(self) -> dict[str, Any]:
        m = self.model
        return {**Judge.describe(self), "rule": "class whose VAE gives the highest ELBO (analysis by synthesis)",
                "margin": "ELBO_y - max_other ELBO_c in nats (reconstruction at the posterior mean)",
                "latent": getattr(m, "latent", None), "arch": getattr(m, "arch", None),
                "weights_sha256": self.weights_sha256}
