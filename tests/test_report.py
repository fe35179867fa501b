"""rsst.report: its numbers equal those computed from the rounds.json files, it trusts only hash-checked
configs, skips a bad run with a warning and reports the rest, never merges unfinished runs with finished
ones, draws lottery-ticket controls as their own lines, and prints a run's provenance."""

from __future__ import annotations

import csv
import json
import statistics
import subprocess

import pytest
import torch
from helpers import FAST, launch, only_run_dir, python
from PIL import Image
from report_runs import controls_override, remaining, rows, write_run

from rsst.commands.report import ReportError, main, report
from rsst.folder.provenance import collect

ACCS = {
    ("imp", None): [[90.0, 89.0, 85.0], [91.0, 88.0, 84.0], [92.5, 88.5, 86.0]],
    ("rsst", "l1"): [[90.0, 90.5, 89.0], [91.0, 90.0, 88.0]],
    ("rsst", "magnitude"): [[90.2, 89.9, 87.0], [91.1, 89.0, 86.5], [90.0, 89.5, 86.1]],
}
LABELS = {"imp": ("imp", None), "rsst l1": ("rsst", "l1"), "rsst magnitude": ("rsst", "magnitude")}


def overrides(method: str, criteria: str | None, *extra: str) -> list[str]:
    return [f"struct={method}", *([f"criteria={criteria}"] if criteria else []), *extra]


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for (method, crit), seeds in ACCS.items():
        for s, accs in enumerate(seeds):
            write_run(root, overrides(method, crit), s, rows(accs, remaining(method, 3)))
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return python("-m", "rsst.report", *map(str, args), timeout=120)


def cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m rsst.report ARGS`` in this process: exit code, stdout, stderr."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("rsst.report: warning:")]


def seeds_per_row(markdown: str) -> dict[str, int]:
    table = [line.strip("| ").split(" | ") for line in markdown.splitlines() if line.startswith("| ")]
    return {cells[0]: int(cells[1]) for cells in table[1:]}


def test_report_numbers_equal_means_and_stds_from_the_files(sweep):
    result = report(sweep)
    assert {g.label for g in result["groups"]} == set(LABELS)
    with open(sweep / "report.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 9
    for row in table:
        method, _ = key = LABELS[row["group"]]
        values = [s[int(row["round"])] for s in ACCS[key]]
        assert row["branch"] == "ticket"
        assert int(row["n"]) == len(values)
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["std"]) == pytest.approx(statistics.stdev(values))
        assert float(row["remain_weight"]) == pytest.approx(remaining(method, 3)[int(row["round"])])
    md = (sweep / "report.md").read_text()
    assert md.count("\n") == 2 + 3  # header, rule, a row per group
    imp_round2 = [85.0, 84.0, 86.0]
    assert f"{statistics.fmean(imp_round2):.2f} ± {statistics.stdev(imp_round2):.2f}" in md


def test_report_plot_is_a_real_image(sweep):
    result = report(sweep)
    png = sweep / "report.png"
    assert png.stat().st_size > 10_000
    layout = result["layout"]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 400
        assert im.size == tuple(round(v * layout.dpi) for v in layout.size_inches)


@pytest.mark.slow
def test_report_on_a_single_run_folder_and_on_nothing(tmp_path, sweep):
    single = next(p for p in sweep.iterdir() if p.name.startswith("imp"))
    result = report(single, out=tmp_path / "single")
    assert [g.label for g in result["groups"]] == ["imp"]
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli(empty)
    assert proc.returncode == 2 and "no run folders" in proc.stderr
    assert proc.stderr.count("\n") == 1


def edit_config(run):
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("rate: 0.2", "rate: 0.5"))
    return cfg


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (edit_config, "was edited"),
        (lambda run: (run / "checkpoint.pt").unlink(), "is missing"),
        (lambda run: (run / "checkpoint.pt").write_bytes(b"not a checkpoint"), "is unreadable"),
        (lambda run: (run / "config.yaml").unlink(), "is missing"),
    ],
    ids=["edited-config", "no-checkpoint", "garbage-checkpoint", "no-config"],
)
def test_a_run_whose_config_is_refused_is_skipped_and_the_rest_reported(sweep, spoil, reason, capsys):
    victim = sorted(p for p in sweep.iterdir() if p.name.startswith("imp"))[0]
    spoil(victim)
    code, out, err = cli(capsys, sweep)
    assert code == 0, err
    warned = warnings_of(err)
    assert len(warned) == 1 and str(victim) in warned[0] and reason in warned[0]
    assert warned == err.splitlines()  # nothing else on stderr: no traceback
    assert seeds_per_row(out) == {"imp": 2, "rsst l1": 2, "rsst magnitude": 3}


BAD_ROUNDS = {
    "truncated": (b'[{"round": 0, "remain_weight": 100.0, "test_acc": 9', "not valid JSON"),
    "binary": (bytes(range(256)) * 4, "not text"),
    "object": (b'{"round": 0}', "not a list of rounds"),
    "numbers": (b"[1, 2, 3]", "row 0 is not an object"),
    "no-round": (b'[{"remain_weight": 100.0, "test_acc": 90.0}]', "expected an integer"),
    "text-weight": (b'[{"round": 0, "remain_weight": "100", "test_acc": 90.0}]', "remain_weight='100'"),
}


def test_unreadable_rounds_json_files_are_each_skipped_with_their_file_and_why(sweep, capsys):
    victims = {}
    for (name, (content, _)), seed in zip(BAD_ROUNDS.items(), range(10, 20), strict=False):
        run = write_run(sweep, ["struct=imp"], seed, [])
        (run / "rounds.json").write_bytes(content)
        victims[name] = run
    code, out, err = cli(capsys, sweep)
    assert code == 0, err
    warned = warnings_of(err)
    assert len(warned) == len(BAD_ROUNDS) and warned == err.splitlines()
    for name, run in victims.items():
        (line,) = [w for w in warned if str(run / "rounds.json") in w]
        assert BAD_ROUNDS[name][1] in line, (name, line)
    assert seeds_per_row(out) == {"imp": 3, "rsst l1": 2, "rsst magnitude": 3}


def test_nothing_left_to_report_exits_2_with_one_line(tmp_path, capsys):
    run = write_run(tmp_path, ["struct=imp"], 0, rows([90.0, 89.0, 88.0], remaining("imp", 3)))
    (run / "rounds.json").write_bytes(b"[{")
    code, _, err = cli(capsys, tmp_path)
    assert code == 2
    errors = [line for line in err.splitlines() if line not in warnings_of(err)]
    assert errors == [
        f"rsst.report: {tmp_path}: nothing to report: {run / 'rounds.json'} is not valid JSON "
        "(Expecting property name enclosed in double quotes at line 1 column 3; truncated?)"
    ]
    with pytest.raises(ReportError, match="nothing to report"):
        report(tmp_path)


def test_a_metric_no_run_records_exits_2_and_names_the_columns_found(sweep, capsys):
    code, _, err = cli(capsys, sweep, "--metric", "test_accuracy")
    assert code == 2
    assert (
        err.splitlines()[-1]
        == f"rsst.report: {sweep}: nothing to report: all 8 run folders were skipped (see the warnings)"
    )
    assert (
        "no numeric 'test_accuracy' (columns: best_epoch, final_test_acc, remain_weight, round, test_acc)"
        in (warnings_of(err)[0])
    )


def test_unfinished_runs_form_their_own_group_and_are_never_merged(tmp_path):
    finished = [[90.0, 89.0, 85.0], [91.0, 88.0, 84.0]]
    for s, accs in enumerate(finished):
        write_run(tmp_path, ["struct=imp"], s, rows(accs, remaining("imp", 3)))
    write_run(tmp_path, ["struct=imp"], 2, rows([80.0, 70.0], remaining("imp", 2)))
    result = report(tmp_path)
    groups = {g.label: g for g in result["groups"]}
    assert set(groups) == {"imp", "imp (2/3 rounds)"}
    assert len(groups["imp"].runs) == 2 and len(groups["imp (2/3 rounds)"].runs) == 1
    means = [lvl["mean"] for lvl in groups["imp"].levels("test_acc")]
    assert means == pytest.approx([90.5, 88.5, 84.5])
    assert [lvl["mean"] for lvl in groups["imp (2/3 rounds)"].levels("test_acc")] == [80.0, 70.0]
    md = result["markdown"].splitlines()
    assert md[2].startswith("| imp | 2 | 90.50 ± 0.71 |")
    assert md[3].startswith("| imp (2/3 rounds) | 1 | 80.00 ± 0.00 | 70.00 ± 0.00 | - |")
    assert {line["label"] for line in result["layout"].lines} == {"imp (n=2)", "imp (2/3 rounds) (n=1)"}


def test_a_run_missing_a_control_round_is_unfinished(tmp_path):
    ctl = controls_override()
    full = {"reinit": [85.0, 80.0], "shuffle_layerwise": [84.0, 79.0]}
    write_run(tmp_path, ["struct=imp", ctl], 0, rows([90.0, 89.0, 88.0], remaining("imp", 3), full))
    short = {"reinit": [85.0, 80.0], "shuffle_layerwise": [84.0]}
    write_run(tmp_path, ["struct=imp", ctl], 1, rows([90.0, 89.0, 88.0], remaining("imp", 3), short))
    assert sorted(g.label for g in report(tmp_path)["groups"]) == ["imp", "imp (2/3 rounds)"]


CONTROL_ACCS = {
    "imp": {"ticket": [[91.5, 91.4, 90.8], [91.7, 91.0, 90.2]], "reinit": [[89.0, 86.0], [88.6, 85.2]]},
    "rsst": {"ticket": [[91.5, 91.0, 90.1], [91.3, 90.6, 89.9]], "reinit": [[88.0, 84.0], [88.4, 84.6]]},
}


@pytest.fixture
def control_sweep(tmp_path):
    for method, accs in CONTROL_ACCS.items():
        for s in range(2):
            shuffled = [a - 0.5 for a in accs["reinit"][s]]
            ctl = {"reinit": accs["reinit"][s], "shuffle_layerwise": shuffled}
            write_run(
                tmp_path,
                [f"struct={method}", controls_override()],
                s,
                rows(accs["ticket"][s], remaining(method, 3), ctl),
            )
    return tmp_path


def test_controls_are_their_own_lines_beside_their_ticket_with_mean_and_std_over_seeds(control_sweep):
    import matplotlib.colors as mcolors

    result = report(control_sweep)
    lines = {line["label"]: line for line in result["layout"].lines}
    for method, accs in CONTROL_ACCS.items():
        ticket, reinit, shuffle = lines[method], lines[f"{method} — reinit"], lines[f"{method} — shuffle_layerwise"]
        assert (ticket["linestyle"], reinit["linestyle"], shuffle["linestyle"]) == ("-", "--", ":")
        hue = mcolors.rgb_to_hsv(ticket["color"])[0]
        assert mcolors.rgb_to_hsv(reinit["color"])[0] == pytest.approx(hue, abs=0.02)
        assert mcolors.rgb_to_hsv(shuffle["color"])[0] == pytest.approx(hue, abs=0.02)
        assert reinit["x"] == pytest.approx(remaining(method, 3)[1:])
        expected = [statistics.fmean(v) for v in zip(*accs["reinit"], strict=True)]
        assert reinit["y"] == pytest.approx(expected)
        assert shuffle["y"] == pytest.approx([v - 0.5 for v in expected])
    with open(control_sweep / "report.csv") as f:
        table = list(csv.DictReader(f))
    imp_reinit = [r for r in table if r["group"] == "imp" and r["branch"] == "reinit"]
    assert [int(r["round"]) for r in imp_reinit] == [1, 2]
    assert float(imp_reinit[1]["std"]) == pytest.approx(statistics.stdev([86.0, 85.2]))
    md = result["markdown"]
    assert "| imp — reinit | 2 | - | 80.0%: 88.80 ± 0.28 | 64.0%: 85.60 ± 0.57 |" in md
    assert md.count("\n") == 2 + 6 - 1


def test_provenance_is_printed_readably(tmp_path, capsys):
    run = write_run(tmp_path, ["struct=imp"], 0, rows([90.0], remaining("imp", 1)))
    record = collect(torch.device("cpu"), {"precision": "fp32"})
    record["slurm_job_id"] = "4242"
    record["git"] = {"commit": "0123456789abcdef", "dirty": True}
    start = {k: record[k] for k in ("time", "host", "command", "slurm_job_id")}
    (run / "provenance.json").write_text(json.dumps({**record, "created": record, "starts": [start, start]}))
    code, out, err = cli(capsys, "--provenance", run)
    assert code == 0, err
    assert "0123456789abcdef (dirty tree)" in out
    assert f"python {record['versions']['python']}, torch {record['versions']['torch']}" in out
    assert f"cpu: {record['device']['name']} ({record['device']['count']} CPUs)" in out
    assert "slurm_job_id  4242" in out and "starts (2):" in out and "precision     fp32" in out
    assert "{" not in out  # no raw JSON


def test_a_missing_or_broken_provenance_is_one_line(tmp_path, capsys):
    record = tmp_path / "provenance.json"
    code, _, err = cli(capsys, "--provenance", tmp_path)
    assert code == 2 and err == f"rsst.report: {record} is missing (runs record it from their first start on)\n"
    record.write_text("[1, 2")
    code, _, err = cli(capsys, "--provenance", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "is unreadable (JSONDecodeError" in err
    record.write_text("[1, 2]")
    code, _, err = cli(capsys, "--provenance", tmp_path)
    assert code == 2 and err == f"rsst.report: {record} is not a provenance record (found a JSON list)\n"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    proc = launch(*FAST, "arch.width=4", "train.epochs=1", "struct=imp", "prune.rounds=2", f"paths.root={root}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(root)


def test_a_real_run_is_reported_and_an_edit_to_its_config_is_refused(real_run, tmp_path):
    rounds = json.loads((real_run / "rounds.json").read_text())
    result = report(real_run, tmp_path / "report")
    (group,) = result["groups"]
    assert group.label == "imp" and group.done is None
    assert [lvl["mean"] for lvl in group.levels("test_acc")] == [r["test_acc"] for r in rounds]
    original = (real_run / "config.yaml").read_text()
    try:
        (real_run / "config.yaml").write_text(original.replace("rate: 0.2", "rate: 0.3"))
        proc = run_cli(real_run, "--out", tmp_path / "edited")
        assert proc.returncode == 2
        assert f"{real_run / 'config.yaml'} was edited" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        (real_run / "config.yaml").write_text(original)


@pytest.mark.parametrize("x", ["channel_density", "macs"])
def test_imp_is_a_dotted_reference_level_on_the_channel_and_macs_axes(tmp_path, x):
    root = tmp_path / "sweep"
    for seed, accs in enumerate([[68.0, 70.0, 77.0], [68.5, 71.0, 78.0]]):
        imp = [{**row, "channel_sparsity": 0.0} for row in rows(accs, remaining("imp", 3))]
        write_run(root, overrides("imp", None), seed, imp)
    for seed, accs in enumerate([[68.0, 67.0, 64.0], [68.5, 66.0, 65.0]]):
        refill = rows(accs, remaining("refill", 3))
        for row, sparsity, macs in zip(refill, [0.0, 19.0, 35.0], [40.5e6, 34.0e6, 28.0e6], strict=True):
            row.update(channel_sparsity=sparsity, **({"macs": macs} if row["round"] else {}))
        write_run(root, overrides("refill", "l1"), seed, refill)
    layout = report(root, tmp_path / "out", x=x)["layout"]
    by_branch = {line["branch"]: line for line in layout.lines}
    assert set(by_branch) == {"ticket", "reference"}
    reference = by_branch["reference"]
    assert reference["y"] == [pytest.approx(77.5)] and reference["x"] == []  # IMP's sparsest round, mean of 2 seeds
    assert reference["label"] == "imp at 64.0% weights, all channels (reference)"
    assert reference["linestyle"] == ":"
    ticket = by_branch["ticket"]
    assert ticket["label"].startswith("refill") and ticket["y"][-1] == pytest.approx(64.5)
    assert len(ticket["x"]) == (3 if x == "channel_density" else 2)
