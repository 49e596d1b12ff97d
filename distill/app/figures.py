"""Pure functions from data to matplotlib Figures: loss curves, codebook health, codes, histograms.

No pyplot and no global state: each function builds its own `matplotlib.figure.Figure` (rendered by
the Agg canvas when saved), so two threads drawing at once cannot interfere and nothing leaks. Long
data is thinned before it reaches matplotlib, so a 500-file run draws as fast as a 5-file one.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure

from distill.events import Kind, Stage

# A calm, readable palette (colour-blind safe pairs).
BLUE, ORANGE, GREEN, RED, GREY, PURPLE = "#3b6fb6", "#e08a2c", "#3a9a5b", "#c8453c", "#8a8f98", "#7a4fb0"
VERDICT_COLOURS = {"healthy": GREEN, "some codes unused": ORANGE, "collapse": RED}
MAX_LINE_POINTS = 1500  # per series; more cannot be seen at 900 px anyway
MAX_CODE_STEPS = 1600  # columns in a code-sequence image


def _figure(width: float, height: float, left: float = 0.75, right: float = 0.25, top: float = 0.35,
            bottom: float = 0.5, hspace: float = 0.35) -> Figure:
    """A Figure with fixed margins in inches (a layout engine costs more than the drawing here)."""
    fig = Figure(figsize=(width, height), dpi=100)
    fig.patch.set_facecolor("white")
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
                        hspace=hspace)
    return fig


def _style(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(True, color="#e6e8eb", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=9, colors="#444")


def _placeholder(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot(1, 1, 1)
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#666", wrap=True, transform=ax.transAxes)
    return fig


def empty_figure(text: str = "Nothing to show yet", width: float = 9.0, height: float = 2.2) -> Figure:
    return _placeholder(_figure(width, height), text)


# --- thinning ---------------------------------------------------------------------------------


def downsample_series(x: Sequence[float], y: Sequence[float], max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Bucket means for a line plot: keeps the trend of a long noisy curve in `max_points` points."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    n = len(xa)
    if n <= max_points:
        return xa, ya
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    sums_x = np.add.reduceat(xa, edges[:-1])
    sums_y = np.add.reduceat(ya, edges[:-1])
    counts = np.diff(edges)
    return sums_x / counts, sums_y / counts


def thin_codes(codes: np.ndarray, max_steps: int = MAX_CODE_STEPS) -> tuple[np.ndarray, int]:
    """Every k-th time step of codes[T, Q] (codes are labels: pick, never average). Returns (codes, k)."""
    t = codes.shape[0]
    if t <= max_steps:
        return codes, 1
    k = int(math.ceil(t / max_steps))
    return codes[::k], k


# --- statistics drawn on the plots ---------------------------------------------------------------


def level_stats(counts: np.ndarray) -> dict:
    """Counts per code for one level -> utilisation, perplexity, dead codes (as drawn on the plots)."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    k = len(c)
    total = c.sum()
    used = int((c > 0).sum())
    if total <= 0:
        return {"codebook_size": k, "used": 0, "utilisation": 0.0, "perplexity": 0.0, "dead_codes": k}
    p = c[c > 0] / total
    perplexity = float(np.exp(-(p * np.log(p)).sum()))
    return {"codebook_size": k, "used": used, "utilisation": used / k, "perplexity": perplexity, "dead_codes": k - used}


# Same thresholds as distill.codes.codebook_health (mirrored: this module must not import torch).
HEALTHY_UTILISATION, COLLAPSE_UTILISATION, COLLAPSE_PERPLEXITY_FRACTION = 0.8, 0.3, 0.1


def verdict(utilisation: float, perplexity: float | None = None, codebook_size: int | None = None) -> str:
    """Plain words for a level's health: "healthy", "some codes unused" or "collapse"."""
    if utilisation < COLLAPSE_UTILISATION:
        return "collapse"
    if perplexity is not None and codebook_size and perplexity < COLLAPSE_PERPLEXITY_FRACTION * codebook_size:
        return "collapse"
    if utilisation < HEALTHY_UTILISATION:
        return "some codes unused"
    return "healthy"


# --- loss curves ----------------------------------------------------------------------------------


def latest_attempt(records: Sequence[dict], stage: str) -> Sequence[dict]:
    """The records from the last fresh start of `stage` on (a retrained prior replaces the old curve; a
    resumed stage continues it, so the steps before the resume stay drawn)."""
    for i in range(len(records) - 1, -1, -1):
        r = records[i]
        if r.get("stage") == stage and r.get("kind") == Kind.STAGE_START and not r.get("resumed"):
            return records[i:]
    return records


def _series(records: Iterable[dict], stage: str, kind: str, key: str, x_key: str = "step") -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        if r.get("stage") != stage or r.get("kind") != kind:
            continue
        v = r.get(key)
        x = r.get(x_key)
        if isinstance(v, (int, float)) and isinstance(x, (int, float)) and math.isfinite(v):
            xs.append(x)
            ys.append(v)
    return xs, ys


def _plot_line(ax, xs, ys, **kw) -> bool:
    if not xs:
        return False
    x, y = downsample_series(xs, ys)
    if len(x) == 1:
        ax.plot(x, y, marker="o", **kw)
    else:
        ax.plot(x, y, **kw)
    return True


LEGEND_ROOM = 0.8  # inches under the axes for the x label and the legend row


def _legend_below(fig: Figure, ax, handles=None, labels=None) -> None:
    """The legend in a row under the plot, outside the axes: it never covers the newest points."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, fontsize=8, frameon=False, loc="upper left", ncol=len(handles),
              bbox_to_anchor=(0.0, -0.17), borderaxespad=0.0, handlelength=1.6, columnspacing=1.2)


def vqvae_loss_figure(records: Sequence[dict], width: float = 6.2, height: float = 3.4) -> Figure:
    """VQ-VAE reconstruction and commitment loss per step, validation loss per evaluation."""
    fig = _figure(width, height, bottom=LEGEND_ROOM)
    records = latest_attempt(records, Stage.VQVAE)
    recon = _series(records, Stage.VQVAE, Kind.STEP, "recon_loss")
    commit = _series(records, Stage.VQVAE, Kind.STEP, "commit_loss")
    total = _series(records, Stage.VQVAE, Kind.STEP, "loss")
    val = _series(records, Stage.VQVAE, Kind.EVAL, "val_loss")
    if not (recon[0] or total[0] or val[0]):
        return _placeholder(fig, "Sound model (VQ-VAE): waiting for the first loss point…")
    ax = fig.add_subplot(1, 1, 1)
    _style(ax)
    if recon[0]:
        _plot_line(ax, *recon, color=BLUE, linewidth=1.4, label="reconstruction (train)")
    elif total[0]:
        _plot_line(ax, *total, color=BLUE, linewidth=1.4, label="loss (train)")
    _plot_line(ax, *commit, color=ORANGE, linewidth=1.2, label="commitment (train)")
    if val[0]:
        ax.plot(val[0], val[1], color=GREEN, marker="o", markersize=4, linewidth=1.4, label="validation")
    ax.set_xlabel("training step", fontsize=9)
    ax.set_ylabel("loss", fontsize=9)
    ax.set_title("Sound model (VQ-VAE)", fontsize=11, loc="left")
    _legend_below(fig, ax)
    return fig


def prior_loss_figure(records: Sequence[dict], width: float = 6.2, height: float = 3.4) -> Figure:
    """Prior training loss per step, train/validation loss and validation perplexity per evaluation."""
    fig = _figure(width, height, right=0.75, bottom=LEGEND_ROOM)
    records = latest_attempt(records, Stage.PRIOR)
    step = _series(records, Stage.PRIOR, Kind.STEP, "loss")
    tr = _series(records, Stage.PRIOR, Kind.EVAL, "train_loss")
    val = _series(records, Stage.PRIOR, Kind.EVAL, "val_loss")
    ppl = _series(records, Stage.PRIOR, Kind.EVAL, "val_perplexity")
    if not (step[0] or val[0] or tr[0]):
        return _placeholder(fig, "Sequence model (prior): starts after the sound model")
    ax = fig.add_subplot(1, 1, 1)
    _style(ax)
    _plot_line(ax, *step, color=BLUE, linewidth=1.0, alpha=0.55, label="train (per step)")
    if tr[0]:
        ax.plot(tr[0], tr[1], color=BLUE, marker="o", markersize=4, linewidth=1.6, label="train")
    if val[0]:
        ax.plot(val[0], val[1], color=GREEN, marker="o", markersize=4, linewidth=1.6, label="validation")
    ax.set_xlabel("training step", fontsize=9)
    ax.set_ylabel("loss (nats / token)", fontsize=9)
    ax.set_title("Sequence model (prior)", fontsize=11, loc="left")
    if ppl[0]:
        ax2 = ax.twinx()
        ax2.plot(ppl[0], ppl[1], color=PURPLE, linestyle="--", marker=".", linewidth=1.0, label="validation perplexity")
        ax2.set_ylabel("perplexity", fontsize=9, color=PURPLE)
        ax2.tick_params(labelsize=8, colors=PURPLE)
        ax2.spines["top"].set_visible(False)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        _legend_below(fig, ax, h1 + h2, l1 + l2)
    else:
        _legend_below(fig, ax)
    return fig


# --- codebook health ------------------------------------------------------------------------------


def health_figure(levels: Sequence[dict], width: float = 6.2, height: float | None = None) -> Figure:
    """One bar per level: share of codes in use, coloured by verdict, with perplexity and dead codes."""
    height = height or max(1.8, 0.55 * max(1, len(levels)) + 1.0)
    fig = _figure(width, height, left=0.7, right=0.3, bottom=0.4)
    if not levels:
        return _placeholder(fig, "Codebook health appears after the first evaluation")
    ax = fig.add_subplot(1, 1, 1)
    _style(ax)
    ax.grid(False)
    names, utils, colours, notes = [], [], [], []
    for i, lv in enumerate(levels):
        u = float(lv.get("utilisation", 0.0))
        u = u / 100.0 if u > 1.0 else u  # accept percentages too
        v = str(lv.get("verdict") or verdict(u, lv.get("perplexity"), lv.get("codebook_size")))
        names.append(str(lv.get("name") or f"level {i + 1}"))  # levels arrive in order; shown 1-based
        utils.append(u)
        colours.append(VERDICT_COLOURS.get(v, GREY))
        ppl = lv.get("perplexity")
        dead = lv.get("dead_codes")
        bits = [f"{u:.0%} in use", v]
        if isinstance(ppl, (int, float)):
            bits.append(f"perplexity {ppl:.1f}")
        if isinstance(dead, (int, float)):
            bits.append(f"{int(dead)} dead")
        notes.append(" · ".join(bits))
    y = np.arange(len(levels))[::-1]
    ax.barh(y, [1.0] * len(levels), color="#eef0f3", height=0.62)
    ax.barh(y, utils, color=colours, height=0.62)
    for yi, note in zip(y, notes):
        ax.text(0.015, yi, note, va="center", ha="left", fontsize=8.5, color="#111", parse_math=False)
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, COLLAPSE_UTILISATION, HEALTHY_UTILISATION, 1.0], ["0", "30 %", "80 %", "100 %"])
    ax.axvline(COLLAPSE_UTILISATION, color=RED, linewidth=0.8, linestyle=":")
    ax.axvline(HEALTHY_UTILISATION, color=GREEN, linewidth=0.8, linestyle=":")
    ax.set_title("Codebook health (share of codes in use per level)", fontsize=11, loc="left")
    return fig


# --- codes ----------------------------------------------------------------------------------------


def code_sequence_figure(
    codes: np.ndarray | None,
    codebook_size: int | None = None,
    steps_per_second: float | None = None,
    title: str = "",
    width: float = 9.0,
) -> Figure:
    """codes[T, Q] as an image: one row per level (level 1 at the top), colour = code index."""
    if codes is None or np.asarray(codes).size == 0:
        return empty_figure("No codes to show yet", width=width, height=1.8)
    c = np.asarray(codes)
    if c.ndim == 1:
        c = c[:, None]
    t, q = c.shape
    shown, k = thin_codes(c)
    fig = _figure(width, max(1.9, 0.42 * q + 1.15), left=0.8, right=1.0)
    ax = fig.add_subplot(1, 1, 1)
    vmax = (codebook_size - 1) if codebook_size else max(1, int(c.max()))
    seconds = t / steps_per_second if steps_per_second else None
    extent = (0, seconds if seconds else t, q - 0.5, -0.5)
    im = ax.imshow(shown.T, aspect="auto", interpolation="nearest", cmap="turbo", vmin=0, vmax=vmax, extent=extent)
    ax.set_yticks(range(q), [f"level {i + 1}" for i in range(q)], fontsize=9)
    ax.set_xlabel("time (s)" if seconds else "code step", fontsize=9)
    ax.tick_params(labelsize=9)
    label = title or "Code sequence"
    if k > 1:
        label += f"  (every {k}th step shown)"
    ax.set_title(label, fontsize=11, loc="left", parse_math=False)  # a file name like "$\\x$" is text, not maths
    cax = fig.add_axes((1 - 0.85 / width, ax.get_position().y0, 0.12 / width, ax.get_position().height))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("code", fontsize=8)
    cb.ax.tick_params(labelsize=8)
    return fig


def _stats_line(name: str, counts: np.ndarray) -> str:
    s = level_stats(counts)
    return (f"{name}: {s['used']}/{s['codebook_size']} used ({s['utilisation']:.0%}), "
            f"perplexity {s['perplexity']:.1f}, {s['dead_codes']} dead")


def histogram_figure(train_counts: np.ndarray | None, generated_counts: np.ndarray | None = None, width: float = 9.0) -> Figure:
    """Per level, how often each code is used: training codes vs generated codes, stats written on each.

    train_counts / generated_counts: [Q, K] counts (either may be None).
    """
    base = train_counts if train_counts is not None else generated_counts
    if base is None or np.asarray(base).size == 0:
        return empty_figure("Token histograms appear once codes are extracted", width=width, height=1.8)
    tr = None if train_counts is None else np.asarray(train_counts, dtype=np.float64)
    ge = None if generated_counts is None else np.asarray(generated_counts, dtype=np.float64)
    q, k = np.asarray(base).shape
    fig = _figure(width, 1.75 * q + 0.55, left=0.75, right=0.2, top=0.4, hspace=0.28)
    axes = fig.subplots(q, 1, squeeze=False)[:, 0]
    edges = np.arange(k + 1) - 0.5
    for i, ax in enumerate(axes):
        _style(ax)
        lines = []
        top = 0.0
        if tr is not None:
            freq = tr[i] / max(1.0, tr[i].sum())
            ax.stairs(freq, edges, fill=True, color=BLUE, alpha=0.55, label="training")
            top = max(top, float(freq.max()))
            lines.append(_stats_line("training", tr[i]))
        if ge is not None:
            freq = ge[i] / max(1.0, ge[i].sum())
            ax.stairs(freq, edges, fill=False, color=ORANGE, linewidth=1.4, label="generated")
            top = max(top, float(freq.max()))
            lines.append(_stats_line("generated", ge[i]))
        ax.set_xlim(-0.5, k - 0.5)
        ax.set_ylim(0, max(top, 1e-6) * 1.5)  # headroom so the stats box never hides the bars
        ax.set_ylabel(f"level {i + 1}", fontsize=9)
        ax.text(0.995, 0.96, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=8,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#ddd", "alpha": 0.9})
        if i == 0:
            ax.legend(fontsize=8, frameon=False, loc="upper left")
            ax.set_title("Token histograms per level (share of tokens per code)", fontsize=11, loc="left")
    axes[-1].set_xlabel("code index", fontsize=9)
    return fig
