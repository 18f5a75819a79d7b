"""Parity and ROC plots as PNG, drawn on matplotlib's Agg canvas (no pyplot, so the caller's
backend and open figures are left alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from ..metrics import classification_metrics, labelled_pairs, regression_metrics

__all__ = ["parity_plot", "roc_plot", "plot"]


def _axes():
    """A 5 x 5 inch figure and its axes, drawn by matplotlib's Agg canvas (no pyplot, so the
    caller's backend and open figures are left alone)."""
    fig = Figure(figsize=(5, 5), dpi=120)
    return fig, fig.subplots()


def parity_plot(y_true, y_pred, path: str | Path, *, name: str, unit: str, title: str = "") -> Path:
    """Predicted against true (`[n]` each, NaN labels skipped) with the y = x line; MAE and R² in
    the title, `true/predicted name [unit]` on the axes. Written as PNG."""
    m = regression_metrics(y_true, y_pred)
    y, p, _ = labelled_pairs(y_true, y_pred)
    label = f"{name} [{unit}]" if unit else name
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    lo, hi = lo - 0.03 * (hi - lo or 1.0), hi + 0.03 * (hi - lo or 1.0)
    fig, ax = _axes()
    ax.scatter(y, p, s=8, alpha=0.5, edgecolors="none")
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"true {label}", ylabel=f"predicted {label}", aspect="equal")
    ax.set_title(f"{title}\nMAE {m['mae']:.4g} {unit}, R² {m['r2']:.3f}, n = {m['n']}".strip(), fontsize=9)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def roc_plot(y_true, prob, path: str | Path, *, name: str, title: str = "") -> Path:
    """ROC curve of probabilities `prob` `[n]` against 0/1 labels `y_true` `[n]`, AUC in the title.
    Written as PNG (the chance diagonal only when one class is present)."""
    m = classification_metrics(y_true, prob)
    y, p, _ = labelled_pairs(y_true, prob)
    fig, ax = _axes()
    if not np.isnan(m["roc_auc"]):
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=1.5, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate", aspect="equal")
    ax.set_title(f"{title}\nROC-AUC {m['roc_auc']:.3f}, accuracy {m['accuracy']:.3f}, n = {m['n']}".strip(),
                 fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return Path(path)


def plot(kind: str, labels, preds, out: Path, name: str, unit: str, title: str) -> Path:
    if kind == "classification":
        return roc_plot(labels, preds, out / "roc.png", name=name, title=title)
    return parity_plot(labels, preds, out / "parity.png", name=name, unit=unit, title=title)
