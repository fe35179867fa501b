"""The report's figure: accuracy against remaining weights, channels or MACs, a line and a band per group and
control, axes of a fixed size with the legend beside them."""

from __future__ import annotations

import colorsys
import io
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsst.commands.reporting.groups import Group, describe_metric, line_label
from rsst.commands.reporting.runs import TICKET, numeric
from rsst.folder.atomic import atomic_write_bytes

# Known lottery-ticket controls, in the order they are drawn; their line style in the plot.
CONTROL_STYLES = {"reinit": ("--", "s"), "shuffle_layerwise": (":", "^")}
OTHER_CONTROL_STYLE = ("-.", "v")


# The plot's x axes: remaining weights, remaining output channels (channel-wise tickets), MACs of the export.
X_LABELS = {
    "remain_weight": "remaining weights (%)",
    "channel_density": "remaining channels (%)",
    "macs": "MACs per image (structured export)",
}
PERCENT_AXES = ("remain_weight", "channel_density")


# The plot's axes box in inches; the figure grows around it to fit labels and legend.
AXES_SIZE = (6.4, 4.2)
DPI = 120
MIN_AXES_AREA = 0.55  # the layout grows the axes until they hold at least this fraction of the figure


@dataclass
class PlotLayout:
    """Where things ended up in the saved figure: boxes in figure fractions (x0, y0, x1, y1), tick labels in pixels."""

    size_inches: tuple[float, float]
    dpi: int
    title: str
    axes: tuple[float, float, float, float]
    legend: tuple[float, float, float, float]
    xtick_labels: list[tuple[str, tuple[float, float, float, float]]]
    lines: list[dict[str, Any]]

    @property
    def axes_area(self) -> float:
        """The axes' share of the figure's area."""
        x0, y0, x1, y1 = self.axes
        return (x1 - x0) * (y1 - y0)


def family(color: Any, branch: str) -> tuple[float, float, float]:
    """The ticket's colour for the ticket; a lighter shade of it for each control."""
    from matplotlib.colors import to_rgb  # noqa: PLC0415  (matplotlib only when plotting)

    if branch == TICKET:
        return to_rgb(color)
    h, lightness, s = colorsys.rgb_to_hls(*to_rgb(color))
    return colorsys.hls_to_rgb(h, min(0.8, lightness + 0.15), s)


def tick_text(v: float, x: str) -> str:
    if x in PERCENT_AXES:
        return f"{v:.3g}"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.3g}"


def boxes_overlap(a: Sequence[float], b: Sequence[float], pad: float = 0.0) -> bool:
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] and b[1] < a[3]


def set_level_ticks(ax: Any, levels: Sequence[float], x: str) -> None:
    """Ticks at the levels actually plotted; from the dense end, a label is kept only if it clears the last kept one."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator  # noqa: PLC0415

    by_text: dict[str, float] = {}
    for v in sorted(levels, reverse=True):
        by_text.setdefault(tick_text(v, x), v)
    ax.xaxis.set_major_locator(FixedLocator(list(by_text.values())))
    ax.xaxis.set_major_formatter(FixedFormatter(list(by_text)))
    ax.xaxis.set_minor_locator(NullLocator())
    fig = ax.figure
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    boxes = sorted(
        [
            (t.get_window_extent(renderer).extents, by_text[t.get_text()])
            for t in ax.xaxis.get_majorticklabels()
            if t.get_text() in by_text
        ],
        key=lambda b: b[0][0] + b[0][2],  # by centre: the order of the levels on screen
    )
    kept: list[float] = []
    last = None
    for box, v in boxes:
        if last is None or not boxes_overlap(box, last, pad=6.0):
            kept.append(v)
            last = box
    ax.xaxis.set_major_locator(FixedLocator(kept))
    ax.xaxis.set_major_formatter(FixedFormatter([tick_text(v, x) for v in kept]))


def plot(
    groups: Sequence[Group],
    metric: str,
    out: Path,
    x: str = "remain_weight",
    references: Sequence[Group] = (),
) -> PlotLayout:
    """Accuracy against remaining weight or MACs (log x): a line per group and control, a band of one std.

    ``references`` are groups with no point on this axis (IMP keeps every channel and the dense
    MACs): each is a dotted level at its sparsest ticket, labelled with that round's weights.
    The axes have a fixed size (:data:`AXES_SIZE`); the legend sits to their right and the figure
    grows to hold it, so the legend never shrinks the axes. Returns the saved figure's layout.
    """
    import matplotlib  # noqa: PLC0415  (matplotlib only when plotting)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    with plt.rc_context({"font.size": 9, "legend.fontsize": 8}):
        fig = plt.figure(figsize=(10, 6), dpi=DPI)
        ax = fig.add_axes((0.1, 0.1, 0.6, 0.7))
        colors = palette(len(groups))
        levels_x: list[float] = []
        lines = []
        seeds = {len(g.runs) for g in groups}
        for g, color in zip(groups, colors, strict=True):
            for branch in g.branches:
                lv = g.levels(metric, x, branch)
                if not lv:
                    continue
                xs = [v[x] for v in lv]
                y = [v["mean"] for v in lv]
                s = [v["std"] for v in lv]
                levels_x += xs
                style, marker = ("-", "o") if branch == TICKET else CONTROL_STYLES.get(branch, OTHER_CONTROL_STYLE)
                c = family(color, branch)
                label = line_label(g, branch) + ("" if len(seeds) == 1 else f" (n={len(g.runs)})")
                ax.plot(xs, y, ls=style, marker=marker, ms=3.5 if branch == TICKET else 3, color=c, label=label)
                lo = [a - b for a, b in zip(y, s, strict=True)]
                hi = [a + b for a, b in zip(y, s, strict=True)]
                ax.fill_between(xs, lo, hi, color=c, alpha=0.18 if branch == TICKET else 0.1, linewidth=0)
                lines.append({"label": label, "branch": branch, "linestyle": style, "color": c, "x": xs, "y": y})
        for g, color in zip(references, palette(len(groups) + len(references))[len(groups) :], strict=True):
            last = g.levels(metric)[-1]
            label = f"{g.label} at {last['remain_weight']:.1f}% weights, all channels (reference)"
            ax.axhline(last["mean"], color=color, ls=":", lw=1.2, label=label)
            lines.append(
                {"label": label, "branch": "reference", "linestyle": ":", "color": color, "x": [], "y": [last["mean"]]}
            )
        dense = [
            float(r.rows()[0][metric])
            for g in [*groups, *references]
            for r in g.runs
            if 0 in r.rows() and r.rows()[0]["remain_weight"] >= 99.999 and numeric(r.rows()[0].get(metric)) is not None
        ]
        if dense:
            ax.axhline(statistics.fmean(dense), color="0.3", ls=(0, (6, 3)), lw=0.9, label="dense (round 0)")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel(X_LABELS[x])
        ax.set_ylabel(metric.replace("_", " ") + " (%)")
        count = next(iter(seeds))
        n = f"{count} seed{'s' if count > 1 else ''}" if len(seeds) == 1 else "seeds (n per line)"
        ax.set_title(f"{describe_metric(metric)}, mean ± std over {n}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
        legend = layout(fig, ax, levels_x, x)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=DPI)
        atomic_write_bytes(out, png.getvalue())  # a temporary file, then a rename: never through a link
        renderer = fig.canvas.get_renderer()
        to_fig = fig.transFigure.inverted()

        def fractions(artist: Any) -> tuple[float, float, float, float]:
            return tuple(float(v) for v in artist.get_window_extent(renderer).transformed(to_fig).extents)

        result = PlotLayout(
            size_inches=tuple(float(v) for v in fig.get_size_inches()),
            dpi=DPI,
            title=ax.get_title(),
            axes=tuple(float(v) for v in ax.get_position().extents),
            legend=fractions(legend),
            xtick_labels=[
                (t.get_text(), tuple(float(v) for v in t.get_window_extent(renderer).extents))
                for t in ax.xaxis.get_majorticklabels()
                if t.get_visible() and t.get_text()
            ],
            lines=lines,
        )
        plt.close(fig)
    return result


def palette(n: int) -> list[Any]:
    import matplotlib  # noqa: PLC0415

    if n <= 20:
        cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
        return [cmap(i) for i in range(n)]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def layout(fig: Any, ax: Any, levels: Sequence[float], x: str) -> Any:
    """Size the figure around axes of :data:`AXES_SIZE` inches, ticks that do not collide and a legend to the right.

    The axes never shrink for the legend: the figure grows, and if the legend is so large that the
    axes would hold less than :data:`MIN_AXES_AREA` of the figure, the axes grow too.
    """
    aw, ah = AXES_SIZE
    gap, pad = 0.15, 0.12  # inches: axes to legend, around the figure
    handles, labels = ax.get_legend_handles_labels()
    legend = None
    for _ in range(20):
        fig.set_size_inches(aw + 4, ah + 2)
        w, h = fig.get_size_inches()
        ax.set_position((1.0 / w, 1.0 / h, aw / w, ah / h))
        set_level_ticks(ax, levels, x)
        renderer = fig.canvas.get_renderer()
        if legend is not None:
            legend.remove()
        row = 0.21  # inches per legend entry at font size 8
        ncol = max(1, math.ceil(len(labels) / max(1, int(ah / row) - 1)))
        legend = fig.legend(handles, labels, loc="upper left", ncol=ncol, frameon=False, borderaxespad=0)
        fig.draw_without_rendering()
        axes_box = ax.get_window_extent(renderer)
        tight = ax.get_tightbbox(renderer)
        lw, lh = legend.get_window_extent(renderer).width / DPI, legend.get_window_extent(renderer).height / DPI
        left = (axes_box.x0 - tight.x0) / DPI
        right = max(0.0, (tight.x1 - axes_box.x1) / DPI)
        bottom = (axes_box.y0 - tight.y0) / DPI
        top = max(0.0, (tight.y1 - axes_box.y1) / DPI)
        width = pad + left + aw + right + gap + lw + pad
        height = pad + bottom + max(ah + top, lh) + pad
        if aw * ah >= MIN_AXES_AREA * width * height:
            break
        aw, ah = aw * 1.1, ah * 1.1
    width, height = math.ceil(width * DPI) / DPI, math.ceil(height * DPI) / DPI  # whole pixels
    fig.set_size_inches(width, height)
    x0, y0 = pad + left, height - pad - top - ah
    ax.set_position((x0 / width, y0 / height, aw / width, ah / height))
    legend.set_bbox_to_anchor(((x0 + aw + right + gap) / width, (y0 + ah) / height), transform=fig.transFigure)
    return legend
