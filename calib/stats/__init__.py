"""Distance statistics in input and embedding space (faiss for L2, exact numba kernels for L-inf/L1)."""
from calib.stats.engine import DEFAULT_PAIRS, SETS, SPACES, PairStats, Stats, StatsConfig, compute_stats
from calib.stats.kernels import dense_exact, nearest_exact
from calib.stats.neighbours import NORMS, SameDiff, nearest, same_diff
from calib.stats.pairwise import LEVELS, ClassPairStats, class_pair_stats, pairwise

__all__ = ["Stats", "StatsConfig", "PairStats", "compute_stats", "SameDiff", "same_diff", "nearest",
           "nearest_exact", "dense_exact", "ClassPairStats", "class_pair_stats", "pairwise", "NORMS", "SPACES",
           "SETS", "DEFAULT_PAIRS", "LEVELS"]
