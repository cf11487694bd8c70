"""The report's PNG: throughput per GPU and tokens per joule, measured next to predicted."""

from __future__ import annotations

from pathlib import Path

import matplotlib

# Files only, never a display; chosen before pyplot is imported.
matplotlib.use("Agg")

import matplotlib.pyplot as plt

from slmpack.demo.autotune_act import ActResult
from slmpack.demo.report import DemoReport, Prediction


def write_plot(report: DemoReport, path: Path) -> None:
    results = (report.baseline, report.packed)

    def label(title: str, prediction: Prediction) -> str:
        gpus = f"{prediction.gpus} GPU{'s' if prediction.gpus != 1 else ''}"
        return f"{title}\n{prediction.mode} x{prediction.replicas_per_gpu} on {gpus}"

    labels = [
        label("one per GPU", report.baseline.prediction),
        label("slmpack", report.packed.prediction),
    ]
    panels = (
        (
            "output tokens/s per GPU",
            [r.measurement.tokens_per_second_per_gpu for r in results],
            [r.prediction.tokens_per_second_per_gpu for r in results],
            report.throughput_ratio,
        ),
        (
            "output tokens per joule",
            [r.measurement.tokens_per_joule for r in results],
            [r.prediction.tokens_per_joule for r in results],
            report.tokens_per_joule_ratio,
        ),
    )
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    width = 0.38
    for ax, (title, measured, predicted, ratio) in zip(axes, panels, strict=True):
        xs = range(len(labels))
        ax.bar([x - width / 2 for x in xs], measured, width, label="measured", color="#2f6db5")
        ax.bar(
            [x + width / 2 for x in xs],
            [p or 0.0 for p in predicted],
            width,
            label="predicted (planner, at this load)",
            color="#a9c4e8",
        )
        for x, value in zip(xs, measured, strict=True):
            ax.annotate(
                f"{value:,.0f}" if value >= 100 else f"{value:.1f}",
                (x - width / 2, value),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(list(xs), labels)
        ax.set_title(f"{title}: x{ratio:.2f}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    load = report.load
    figure.suptitle(
        f"{load.model} on {load.gpu_product} ({load.engine}): the same demand, "
        f"{load.demand_tokens_per_s:,.0f} output tokens/s"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_autotune_plot(act: ActResult, path: Path) -> None:
    """Replicas (set and ready) and the load's clients over time, each decision marked."""
    fig, replicas_axis = plt.subplots(figsize=(9, 4))
    times = [s.at_s for s in act.samples]
    replicas_axis.step(times, [s.replicas for s in act.samples], where="post", label="replicas")
    replicas_axis.step(
        times, [s.ready for s in act.samples], where="post", linestyle="--", label="ready"
    )
    replicas_axis.set_xlabel("seconds since the load started")
    replicas_axis.set_ylabel("vLLM replicas (1 per L4)")
    replicas_axis.set_ylim(0, max([s.replicas for s in act.samples] + [1]) + 1)
    clients_axis = replicas_axis.twinx()
    clients_axis.plot(times, [s.clients for s in act.samples], color="grey", alpha=0.5)
    clients_axis.set_ylabel("load: concurrent clients", color="grey")
    for row in act.decisions:
        if row.action != "Hold" and row.at_s is not None:
            replicas_axis.axvline(row.at_s, color="red", alpha=0.4)
            replicas_axis.annotate(
                f"{row.action} {row.reason}",
                (row.at_s, replicas_axis.get_ylim()[1] * 0.95),
                rotation=90,
                fontsize=7,
                va="top",
            )
    replicas_axis.legend(loc="upper left")
    replicas_axis.set_title("slmpack autotune, Auto mode: replicas follow the load")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
