"""rsst.report reads like a paper's figure: labels name the method and only what varies among its runs,
the legend sits outside axes that keep most of the figure, x tick labels never collide, and the table
never puts a row under a remaining weight it did not reach."""

from __future__ import annotations

import itertools
import re

import pytest
from PIL import Image
from report_runs import CONTROLS, controls_override, remaining, rows, write_run

from rsst.commands.report import AXES_SIZE, boxes_overlap, report


def accuracies(rounds: int, start: float, drop: float, seed: int) -> list[float]:
    """A plausible curve: flat, then falling faster with each round; seeds a few tenths apart."""
    return [start - drop * r * r / rounds + 0.3 * ((seed * 7 + r * 3) % 5 - 2) / 2 for r in range(rounds)]


def sweep(root, grid: list[tuple[str, list[str]]], seeds=(1, 2), rounds=4, controls=False):
    """Write a run folder per (method, overrides) and seed; controls 1.5 and 2 points under the ticket."""
    for k, (method, extra) in enumerate(grid):
        for s in seeds:
            accs = accuracies(rounds, 91.5, 1.0 + k, s)
            ctl = {c: [a - 1.5 - 0.5 * i for a in accs[1:]] for i, c in enumerate(CONTROLS)} if controls else None
            rate = next((float(o.split("=")[1]) for o in extra if o.startswith("prune.rate=")), 0.2)
            write_run(
                root,
                [f"struct={method}", f"prune.rounds={rounds}", *extra, *([controls_override()] if controls else [])],
                s,
                rows(accs, remaining(method, rounds, rate), ctl),
            )
    return root


THREE_METHODS = [("imp", []), ("refill", []), ("rsst", [])]
FIVE_CRITERIA = [("rsst", [f"criteria={c}"]) for c in ("remain", "magnitude", "l1", "l2", "saliency")]
MIXED = [("imp", []), ("refill", []), ("rsst", ["criteria=l1"]), ("rsst", ["criteria=magnitude"])]


@pytest.mark.parametrize(
    ("grid", "labels"),
    [
        (THREE_METHODS, {"imp", "refill", "rsst"}),
        (MIXED, {"imp", "refill", "rsst l1", "rsst magnitude"}),
        (FIVE_CRITERIA, {"rsst remain", "rsst magnitude", "rsst l1", "rsst l2", "rsst saliency"}),
        (
            [("imp", ["prune.rate=0.2"]), ("imp", ["prune.rate=0.5"]), ("rsst", ["criteria=l1"]), ("refill", [])],
            {"imp rate=0.2", "imp rate=0.5", "rsst", "refill"},
        ),
        (
            [("rsst", ["schedule=x2"]), ("rsst", ["schedule=x3"]), ("rsst", ["schedule=exp_custom"])],
            {"rsst stepped kind=x2", "rsst stepped kind=x3", "rsst expcustom"},
        ),
    ],
    ids=["three-methods", "mixed", "five-criteria", "rates", "schedules"],
)
def test_labels_hold_the_method_and_only_keys_that_vary_among_its_runs(tmp_path, grid, labels):
    result = report(sweep(tmp_path, grid, rounds=2))
    assert {g.label for g in result["groups"]} == labels
    assert all(len(g.runs) == 2 for g in result["groups"])


def test_a_label_leaves_out_the_controls_key_unless_it_alone_tells_two_groups_apart(tmp_path):
    """The structured study's arms: Refill and RSST with the reinit control, two RSST ablations without it."""
    reinit = controls_override(("reinit",))
    grid = [
        ("refill", [reinit]),
        ("rsst", [reinit]),
        ("rsst", ["struct.penalty_scope=channels"]),
        ("rsst", ["schedule.period=round"]),
    ]
    for k, (method, extra) in enumerate(grid):
        for s in (1, 2):
            accs = accuracies(3, 68.0, 1.0 + k, s)
            ctl = {"reinit": [a - 1.0 for a in accs[1:]]} if reinit in extra else None
            config = [f"struct={method}", "prune.rounds=3", *extra]
            write_run(tmp_path, config, s, rows(accs, remaining(method, 3), ctl))
    result = report(tmp_path)
    assert {g.label for g in result["groups"]} == {
        "refill",
        "rsst period=epoch",
        "rsst penalty_scope=channels period=epoch",
        "rsst period=round",
    }
    assert {line["label"] for line in result["layout"].lines} >= {"refill — reinit", "rsst period=epoch — reinit"}
    # RSST with and without the control, otherwise alike: the key is all that tells them apart, so every RSST
    # label keeps it
    write_run(tmp_path, ["struct=rsst", "prune.rounds=3"], 1, rows(accuracies(3, 68.0, 2.0, 1), remaining("rsst", 3)))
    assert {g.label for g in report(tmp_path)["groups"]} == {
        "refill",
        'rsst controls=["reinit"] period=epoch',
        "rsst controls=[] period=epoch",
        "rsst controls=[] penalty_scope=channels period=epoch",
        "rsst controls=[] period=round",
    }


@pytest.mark.parametrize(
    ("grid", "controls", "rounds", "lines"),
    [(THREE_METHODS, True, 6, 3 * 3), (FIVE_CRITERIA, False, 10, 5), (FIVE_CRITERIA, True, 10, 5 * 3)],
    ids=["three-methods-with-controls", "five-criteria", "five-criteria-with-controls"],
)
def test_the_legend_sits_outside_axes_that_keep_at_least_half_the_figure(tmp_path, grid, controls, rounds, lines):
    result = report(sweep(tmp_path, grid, controls=controls, rounds=rounds))
    layout = result["layout"]
    assert len(layout.lines) == lines
    assert layout.axes_area >= 0.5
    assert not boxes_overlap(layout.axes, layout.legend)
    assert layout.legend[0] >= layout.axes[2]  # to the right of the axes
    assert all(0.0 <= v <= 1.0 for v in layout.legend)  # and inside the figure
    width, height = layout.size_inches
    assert (layout.axes[2] - layout.axes[0]) * width >= AXES_SIZE[0] - 1e-6
    assert (layout.axes[3] - layout.axes[1]) * height >= AXES_SIZE[1] - 1e-6
    with Image.open(tmp_path / "report.png") as im:
        assert im.size == (round(width * layout.dpi), round(height * layout.dpi))


def test_x_tick_labels_never_collide_and_sit_at_levels_that_were_plotted(tmp_path):
    # Levels close together (IMP at 90/81/72.9 and 80/64/51.2, refill at 79.09/61.96...) over 12 rounds.
    grid = [("imp", ["prune.rate=0.1"]), ("imp", ["prune.rate=0.2"]), ("refill", [])]
    layout = report(sweep(tmp_path, grid, rounds=12))["layout"]
    labels = layout.xtick_labels
    assert len(labels) >= 6
    for (_, a), (_, b) in itertools.combinations(labels, 2):
        assert not boxes_overlap(a, b), (a, b)
    plotted = {f"{x:.3g}" for line in layout.lines for x in line["x"]}
    assert {text for text, _ in labels} <= plotted
    assert labels[0][0] == "100"


def cells(markdown: str) -> tuple[list[str], list[list[str]]]:
    head, _, *body = markdown.splitlines()
    split = [[c.strip() for c in line.strip("|").split("|")] for line in [head, *body]]
    return split[0], split[1:]


def test_a_column_names_a_level_only_when_every_row_reached_it(tmp_path):
    result = report(sweep(tmp_path, THREE_METHODS, rounds=3, controls=True))
    head, body = cells(result["markdown"])
    assert head[2:] == ["round 0: 100.0%", "round 1", "round 2"]
    by_label = {row[0]: row for row in body}
    assert by_label["imp"][3].startswith("80.0%: ") and by_label["imp"][4].startswith("64.0%: ")
    assert by_label["refill"][3].startswith("79.1%: ") and by_label["refill"][4].startswith("62.0%: ")
    assert by_label["rsst — reinit"][2] == "-" and by_label["rsst — reinit"][3].startswith("79.1%: ")
    assert len(by_label) == 9
    for label, row in by_label.items():
        for cell in row[3:]:
            assert re.fullmatch(r"\d+\.\d%: \d+\.\d\d ± \d+\.\d\d", cell), (label, cell)


def test_a_sweep_at_one_level_per_round_names_it_in_the_header(tmp_path):
    result = report(sweep(tmp_path, [("imp", ["prune.rate=0.2"]), ("imp", ["prune.rate=0.2", "optimizer.lr=0.05"])]))
    head, body = cells(result["markdown"])
    assert head[2:] == ["round 0: 100.0%", "round 1: 80.0%", "round 2: 64.0%", "round 3: 51.2%"]
    assert [row[0] for row in body] == ["imp lr=0.05", "imp lr=0.1"]
    assert all(re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d", c) for row in body for c in row[2:])


@pytest.mark.parametrize(
    ("metric", "measured"),
    [("test_acc", "test_acc (ticket, best-val epoch)"), ("final_test_acc", "final_test_acc (ticket, last epoch)")],
)
def test_the_table_header_and_plot_title_say_what_was_measured(tmp_path, metric, measured):
    result = report(sweep(tmp_path, THREE_METHODS, rounds=2), metric=metric)
    head, _ = cells(result["markdown"])
    assert head[0] == f"{measured}: mean ± std"
    assert result["layout"].title == f"{measured}, mean ± std over 2 seeds"
