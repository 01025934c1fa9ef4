"""Epsilon budgets: geometric (per class, per sample) and the versioned epsilon table."""
from calib.budgets.calibrate import final_table, geometric_table, per_sample_budgets
from calib.budgets.geometric import CUSTOMARY, Budget, Policy, coverage, geometric_budget, global_violations, safe_mask
from calib.budgets.table import EpsTable, EpsTableError, load_table, table_from_budgets, validate

__all__ = ["Policy", "Budget", "geometric_budget", "coverage", "global_violations", "safe_mask", "CUSTOMARY",
           "EpsTable", "EpsTableError", "load_table", "table_from_budgets", "validate", "geometric_table",
           "per_sample_budgets", "final_table"]
