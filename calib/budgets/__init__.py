"""Epsilon budgets: geometric (input space), the embedding margin, semantic (the judge's robustness
radius, bracketed by an attack and a certificate), per-sample budgets and the versioned epsilon table."""
from calib.budgets.calibrate import SEMANTIC_BOUNDS, final_table, geometric_table, per_sample_budgets
from calib.budgets.geometric import CUSTOMARY, Budget, Policy, coverage, geometric_budget, global_violations, safe_mask
from calib.budgets.margin import MarginBudget, margin_budget, margin_coverage, one_nn_margin
from calib.budgets.per_sample import PerSampleBudgets, load_per_sample
from calib.budgets.table import (BudgetColumn, EpsTable, EpsTableError, SemanticBracket, load_table,
                                 table_from_budgets, validate)

__all__ = ["Policy", "Budget", "geometric_budget", "coverage", "global_violations", "safe_mask", "CUSTOMARY",
           "MarginBudget", "margin_budget", "margin_coverage", "one_nn_margin", "EpsTable", "EpsTableError",
           "BudgetColumn", "SemanticBracket", "load_table", "table_from_budgets", "validate", "geometric_table",
           "per_sample_budgets", "final_table",
           "SEMANTIC_BOUNDS", "PerSampleBudgets", "load_per_sample"]
