"""Evaluation: a checkpoint scored on a labelled file (report.json, predictions.csv, a parity or
ROC plot), and the MatBench protocol (KFold with MatBench's seed, each fold fine-tuned from the
checkpoint with its own normalisation and scored on its held-out fold).

    labelled.py  read_labelled, LabelledData, select_task
    report.py    evaluate_checkpoint and the report's parts
    plots.py     parity_plot, roc_plot
    folds.py     fold_indices, FoldSplit, fold_config, evaluate_folds
The metrics themselves are `foundation.metrics`.
"""

from ..metrics import classification_metrics, regression_metrics
from .folds import MATBENCH_RANDOM_STATE, FoldSplit, evaluate_folds, fold_config, fold_indices
from .labelled import LabelledData, read_labelled, select_task
from .plots import parity_plot, roc_plot
from .report import evaluate_checkpoint, report_table

__all__ = ["regression_metrics", "classification_metrics", "LabelledData", "read_labelled", "select_task",
           "parity_plot", "roc_plot", "evaluate_checkpoint", "report_table", "fold_indices", "FoldSplit",
           "fold_config", "evaluate_folds", "MATBENCH_RANDOM_STATE"]
