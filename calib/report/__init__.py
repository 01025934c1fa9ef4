"""The interactive HTML report of a run (Plotly, offline)."""
from calib.report.build import SECTIONS, html_table, write_report

__all__ = ["SECTIONS", "html_table", "write_report"]
