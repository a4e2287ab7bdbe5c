"""Evaluation: pose-error metrics against ground truth, reports (JSON, markdown) and plots."""

from sceneloc.evaluate.metrics import RECALL_THRESHOLDS, evaluate_poses
from sceneloc.evaluate.plots import plot_error_cdf, plot_recall_against_size, plot_trajectory
from sceneloc.evaluate.report import format_summary_table, write_report

__all__ = ["RECALL_THRESHOLDS", "evaluate_poses", "format_summary_table", "plot_error_cdf",
           "plot_recall_against_size", "plot_trajectory", "write_report"]
