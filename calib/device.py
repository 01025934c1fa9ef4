"""Device selection and seeding shared by training, statistics and attacks."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from calib.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``/``cuda``/``cuda:N`` checked for existence."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; enable deterministic algorithms. Returns a CPU torch Generator.

    With the same seed, CPU runs give bit-identical weights. On CUDA, cuDNN is put in deterministic
    mode too, but kernels may still differ across GPU models and driver versions.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer; got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


#: the default CPU thread count: every core, up to 4. Measured on a 2-core machine (README, "Threads"):
#: the digits run takes 33.6 s with 2 threads and 44.2 s with 1 on an idle machine; on a machine another
#: job keeps busy, small attack steps run 1.7x faster with 1 thread (use --threads 1 there)
DEFAULT_THREADS = max(1, min(4, os.cpu_count() or 1))


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` CPU threads in torch, numba and faiss (default :data:`DEFAULT_THREADS`, or
    ``$CALIB_THREADS``); returns the count now in use. Results depend on it in the last bits (a
    different reduction order), so runs record it and cache keys include it."""
    if threads is None:
        env = os.environ.get("CALIB_THREADS")
        try:
            threads = int(env) if env else DEFAULT_THREADS
        except ValueError as exc:
            raise ConfigError(f"CALIB_THREADS must be a whole number; got {env!r}") from exc
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a whole number >= 1; got {threads!r}")
    torch.set_num_threads(threads)
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a declared dependency
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    return torch.get_num_threads()
