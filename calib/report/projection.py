"""2-D views of the embedding: PCA (linear, faithful to global distances) and t-SNE (local
neighbourhoods), both seeded."""
from __future__ import annotations

import numpy as np
from torch import nn

from calib.models.infer import forward_batched


def project(embedding: nn.Module, images: np.ndarray, seed: int = 0, perplexity: float = 30.0,
            device: str = "cpu") -> dict[str, np.ndarray]:
    """Embed (N, C, H, W) images with g (on ``device``) and return ``embedding`` (N, d), ``pca`` (N, 2) and
    ``tsne`` (N, 2) (scikit-learn, CPU)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    e = forward_batched(embedding, images, device=device).numpy().astype(np.float32)
    pca = PCA(n_components=2, random_state=seed).fit_transform(e)
    n = len(e)
    tsne = TSNE(n_components=2, perplexity=float(min(perplexity, max(2.0, (n - 1) / 3))), init="pca",
                random_state=seed, n_jobs=1).fit_transform(e)
    return {"embedding": e, "pca": pca.astype(np.float32), "tsne": tsne.astype(np.float32)}
