"""The training benchmark's report: the Markdown table, the training-loss gaps and the two plots.

Kept apart from ``train.py`` so a results file can be shown again (``python benchmarks/train.py --replot``).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.benchlib import pyplot, save_figure

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"


def mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f}"


def table(rows: list[dict], baseline: dict) -> str:
    """The results as a Markdown table; the percentages are against full fine-tuning."""
    full = next((r for r in rows if r["name"] == "full"), None)
    cuda = any("cuda_peak_bytes" in r for r in rows)

    def rel(v, ref):
        return "" if not full or v is None or ref in (None, 0) or v is ref else f" ({100 * (v / ref - 1):+.0f}%)"

    head = (
        ["method", "trainable params", "median step s", "fastest step s", "peak RssAnon MiB"]
        + (["peak CUDA MiB"] if cuda else [])
        + ["task loss", "general loss", "final train loss"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append(
        "| before training | - | - | - | - |"
        + (" - |" if cuda else "")
        + f" {baseline['task_loss']:.4f} | {baseline['general_loss']:.4f} | - |"
    )
    for r in rows:
        # percent of the base model: LoRA's total also counts its adapters
        base = r["total_params"] - (r["trainable_params"] if r.get("group") == "lora" else 0)
        cells = [
            r["name"],
            f"{r['trainable_params'] / 1e6:.2f}M ({100 * r['trainable_params'] / base:.1f}%)",
            f"{r['median_step_s']:.3f}" + rel(r["median_step_s"], full and full["median_step_s"]),
            f"{r['min_step_s']:.3f}" + rel(r["min_step_s"], full and full["min_step_s"]),
            mib(r["peak_rss_anon_bytes"]) + rel(r["peak_rss_anon_bytes"], full and full["peak_rss_anon_bytes"]),
        ]
        if cuda:
            cells.append(
                mib(r.get("cuda_peak_bytes")) + rel(r.get("cuda_peak_bytes"), full and full.get("cuda_peak_bytes"))
            )
        cells += [
            f"{r['task_loss_after']:.4f}",
            f"{r['general_loss_after']:.4f} ({r['general_loss_after'] - baseline['general_loss']:+.4f})",
            f"{r['losses'][-1]:.4f}" if r["losses"] else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loss_gaps(rows: list[dict]) -> str:
    """Mean over steps of each method's training loss minus full fine-tuning's on the same batch."""
    full = next((r["losses"] for r in rows if r["name"] == "full"), None)
    if not full:
        return ""
    gaps = [
        (r["name"], sum(a - b for a, b in zip(r["losses"], full)) / max(len(full), 1))
        for r in rows
        if r["name"] != "full"
    ]
    return "mean training-loss gap to full fine-tuning (same batches): " + ", ".join(f"{n} {g:+.4f}" for n, g in gaps)


def plots(rows: list[dict], baseline: dict, mode: str, device: str, tag: str = "") -> list[str]:
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()

    IMAGES.mkdir(parents=True, exist_ok=True)
    suffix = f"{mode}" + ("" if device == "cpu" else f"-{device}") + (f"-{tag}" if tag else "")
    colors = {
        "full": "black",
        "spectrum25": "tab:blue",
        "spectrum50": "tab:green",
        "random25": "tab:gray",
        "last-layers": "tab:orange",
        "lora": "tab:red",
    }
    out = []
    full = next((r["losses"] for r in rows if r["name"] == "full"), None)
    fig, axes = plt.subplots(1, 2 if full else 1, figsize=(13 if full else 8, 4.5), squeeze=False)
    for r in rows:
        style = dict(
            label=r["name"],
            color=colors.get(r["group"], None),
            linestyle="--" if r["name"].endswith("-ref") else "-",
            alpha=0.6 if r["group"] == "random25" else 1,
        )
        axes[0][0].plot(range(1, len(r["losses"]) + 1), r["losses"], **style)
        if full and r["name"] != "full":
            axes[0][1].plot(range(1, len(r["losses"]) + 1), [a - b for a, b in zip(r["losses"], full)], **style)
    axes[0][0].set_ylabel("training loss (answer tokens)")
    axes[0][0].set_title(f"SmolLM2-135M-Instruct on ShareGPT, {mode} mode ({device})", fontsize=10)
    axes[0][0].legend(fontsize=8, ncol=2)
    if full:
        axes[0][1].axhline(0, color="black", linewidth=0.8)
        axes[0][1].set_ylabel("loss minus full fine-tuning's loss")
        axes[0][1].set_title("the same batches, relative to full fine-tuning", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("step")
    out.append(save_figure(fig, IMAGES / f"bench-train-{suffix}-loss.png"))

    names = [r["name"] for r in rows]
    cols = [colors.get(r["group"], "tab:purple") for r in rows]
    panels = [
        ("median step time (s)", [r["median_step_s"] for r in rows]),
        ("peak RssAnon (MiB)", [r["peak_rss_anon_bytes"] / 2**20 for r in rows]),
    ]
    if any("cuda_peak_bytes" in r for r in rows):
        panels.append(("peak CUDA memory (MiB)", [r.get("cuda_peak_bytes", 0) / 2**20 for r in rows]))
    panels.append(("general-text loss change", [r["general_loss_after"] - baseline["general_loss"] for r in rows]))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.5))
    for ax, (title, vals) in zip(axes, panels):
        ax.barh(names, vals, color=cols)
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.axvline(0, color="black", linewidth=0.6)
    out.append(save_figure(fig, IMAGES / f"bench-train-{suffix}-cost.png"))
    return out
