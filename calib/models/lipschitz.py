"""An embedding with a certified Lipschitz constant: orthogonal linear layers and MaxMin activations.

Threat model of the certificate: any input change delta moves the embedding by at most
``L * ||delta||_2`` (L2 in, L2 out), for every input, not just those tried. The network is::

    flatten -> Linear(n, w) -> MaxMin -> [Linear(w, w) -> MaxMin] * (depth - 1) -> Linear(w, dim)

MaxMin (Anil et al. 2019, GroupSort of group size 2) sorts each pair of coordinates: a permutation
on each side of the pair's diagonal, so it is 1-Lipschitz in L2 and preserves gradient norms. During
training every Linear weight is kept orthogonal by torch's own parametrization
(``torch.nn.utils.parametrizations.orthogonal``, Cayley map): orthonormal rows or columns, spectral
norm 1. After training the parametrization is removed and the plain weights are saved; the constant
is then *computed* from them, not assumed: ``L = prod_i sigma_max(W_i)`` with each spectral norm from a
float64 SVD (:func:`lipschitz_constant`). Outputs are not normalised (normalisation is not
Lipschitz near 0), so distances live on the network's own scale, bounded by the input distances.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

from calib.errors import ArtefactError, ConfigError


class MaxMin(nn.Module):
    """(N, 2m) -> (N, 2m): ``[max(a, b), min(a, b)]`` for the two halves a, b; 1-Lipschitz in L2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], 1)


class LipschitzEmbedding(nn.Module):
    """Embedding g: (N, C, H, W) in [0,1] -> (N, dim), L2-Lipschitz with the constant of its weights.

    Args:
        input_shape: (C, H, W).
        width: hidden width (even, for MaxMin); depth: hidden layers; dim: embedding dimension.
    """

    def __init__(self, *, input_shape: tuple[int, int, int], width: int = 512, depth: int = 3, dim: int = 64) -> None:
        super().__init__()
        if width < 2 or width % 2 or depth < 1 or dim < 1:
            raise ConfigError(f"lipschitz embedding needs an even width >= 2, depth >= 1 and dim >= 1; got width "
                              f"{width}, depth {depth}, dim {dim}")
        n = int(input_shape[0] * input_shape[1] * input_shape[2])
        layers: list[nn.Module] = [nn.Flatten()]
        d_in = n
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), MaxMin()]
            d_in = width
        layers.append(nn.Linear(d_in, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def orthogonalize(model: nn.Module) -> nn.Module:
    """Register the orthogonal parametrization on every Linear weight (for training), in place."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and not parametrize.is_parametrized(m, "weight"):
            parametrizations.orthogonal(m, "weight", orthogonal_map="cayley")
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Remove the parametrizations, keeping the current (orthogonal) weights as plain tensors, in place."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


@torch.no_grad()
def lipschitz_constant(model: nn.Module) -> float:
    """An upper bound on g's L2 -> L2 Lipschitz constant: the product of the exact spectral norms of
    its Linear layers (float64 SVD); Flatten and MaxMin are 1-Lipschitz.

    Raises:
        ArtefactError: the network holds a layer whose constant calib cannot bound.
    """
    net = getattr(model, "net", model)
    total = 1.0
    for layer in net:
        if isinstance(layer, nn.Linear):
            total *= float(torch.linalg.matrix_norm(layer.weight.detach().double().cpu(), ord=2))
        elif not isinstance(layer, (nn.Flatten, MaxMin)):
            raise ArtefactError(f"cannot bound the Lipschitz constant of layer {type(layer).__name__}")
    return total


__all__ = ["MaxMin", "LipschitzEmbedding", "orthogonalize", "freeze", "lipschitz_constant"]
