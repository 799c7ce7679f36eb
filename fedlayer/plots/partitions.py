"""The label distribution of a partition: how many samples of each class every client holds (for a language
task, how many windows end before each next token)."""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from fedlayer.data.partition import Partitions
from fedlayer.task_kinds import CLASSIFICATION, LANGUAGE

MAX_LEGEND_CLASSES = 20
MAX_CLIENT_TICKS = 40


def label_distribution_figure(
    partitions: Partitions, *, class_names: list[str] | None = None, task: str = CLASSIFICATION
) -> Figure:
    """Stacked horizontal bars, one per client, one colour per class (train and local test together); a
    language task's (`fedlayer.task_kinds`) partitions count windows by the token that follows each."""
    counted, label = ("windows", "next token") if task == LANGUAGE else ("samples", "class")
    counts = partitions.class_counts().to_numpy()
    num_clients, num_classes = counts.shape
    names = class_names or [str(c) for c in range(num_classes)]
    cmap = matplotlib.colormaps["tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "viridis"]
    colors = cmap(np.linspace(0, 1, num_classes)) if num_classes > 20 else cmap(np.arange(num_classes))

    fig = Figure(figsize=(8, max(2.5, min(16.0, 0.3 * num_clients + 1.5))))
    ax = fig.subplots()
    left = np.zeros(num_clients)
    for c in range(num_classes):
        ax.barh(np.arange(num_clients), counts[:, c], left=left, color=colors[c], label=names[c], height=0.8)
        left += counts[:, c]
    step = max(1, int(np.ceil(num_clients / MAX_CLIENT_TICKS)))
    ax.set_yticks(np.arange(0, num_clients, step))
    ax.invert_yaxis()  # client 0 on top, as in the printed table
    ax.set_ylabel("client")
    ax.set_xlabel(counted)
    params = ", ".join(f"{k}={v}" for k, v in partitions.params.items())
    dataset = f"{partitions.dataset}: " if partitions.dataset else ""
    ax.set_title(f"{dataset}{partitions.method} partition ({params}), {num_clients} clients, seed {partitions.seed}")
    if num_classes <= MAX_LEGEND_CLASSES:
        ax.legend(title=label, bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")
    else:
        mappable = ScalarMappable(cmap=cmap, norm=Normalize(0, num_classes - 1))
        fig.colorbar(mappable, ax=ax, label=label)
    return fig
