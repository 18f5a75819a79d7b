"""The statistics of a run's tasks, computed once from the train splits' manifests: the one place
`TaskStats` are made. The model's heads, the loss, the metrics and early stopping all read these.

An energy task with forces takes the RMS force component of its datasets as its scale (MACE's
choice): forces are the energy's gradient, so one scale serves both, and the per-atom energy
spread of an MD or relaxation set (LiPS: 0.006 eV/atom against 0.6 eV/Å forces; OC22: ~0) would
otherwise make the initial forces 100x too small or the loss explode. The force task itself has no
entry: the loss uses its energy's. A force-only `potential` (no labels) gets mean 0 and that scale.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..data.shards import dataset_statistics, read_manifest
from ..data.shards.statistics import combine
from ..model.tasks import TaskSpec, TaskStats

__all__ = ["task_statistics", "mean_predictors"]


def task_statistics(tasks: list[TaskSpec], shard_dirs: Mapping[str, str]) -> dict[str, TaskStats]:
    """{task: TaskStats} of every regression task with labels in its datasets' train splits."""
    normalization, element_refs = dataset_statistics(dict(shard_dirs), tasks)
    for task in tasks:
        if task.forces_of is None:
            continue
        chosen = {n: d for n, d in shard_dirs.items() if task.uses(n)}
        force_stats, _ = dataset_statistics(chosen)
        if task.target not in force_stats:
            continue
        if task.forces_of in normalization:
            mean, _ = normalization[task.forces_of]
            normalization[task.forces_of] = (mean, force_stats[task.target][1])
        elif not next(t for t in tasks if t.name == task.forces_of).labelled:
            normalization[task.forces_of] = (0.0, force_stats[task.target][1])
    return {name: TaskStats((mean,), (std,), element_refs.get(name, {}))
            for name, (mean, std) in normalization.items()}


def mean_predictors(tasks: list[TaskSpec], shard_dirs: Mapping[str, str]) -> dict[str, tuple[float, bool]]:
    """{task: (value, per_atom)}: the mean predictor every head is judged against, from the train
    splits of the task's datasets. An intensive label: its train mean; an extensive one (a total
    energy): the mean per-atom label times the structure's atoms (stronger than one constant for
    cells of 2 to 200 atoms); an atom-level label (forces): 0 per component. Classification tasks
    have none (ROC-AUC 0.5 is the chance level)."""
    manifests = {n: read_manifest(d) for n, d in shard_dirs.items()}
    out: dict[str, tuple[float, bool]] = {}
    for task in tasks:
        if task.kind != "regression":
            continue
        if task.level == "atom" or task.forces_of is not None:
            out[task.name] = (0.0, False)
            continue
        state = combine([m["label_sums"] for n, m in manifests.items() if task.uses(n) and "label_sums" in m])
        moments, system = state["moments"].get(task.target), state["systems"].get(task.target)
        if not moments or moments[0] == 0:
            continue
        if task.extensive and system is not None and system["n"]:
            out[task.name] = (system["sum_z"] / system["n"], True)
        else:
            out[task.name] = (moments[1] / moments[0], False)
    return out
