"""`bbrctl report`: definitions, matching, aggregation over seeds, incomplete runs, formats.

Run directories are built in the real format (bbrctl.store.prepare_run_dir + results.json
written atomically), with the base config composed from the shipped conf/ tree.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbrctl.errors import UserError
from bbrctl.report import definitions
from bbrctl.report.collect import collect
from bbrctl.report.main import report_figure, report_table
from bbrctl.report.matching import equal, matches, parse_where
from bbrctl.report.paper import paper_tables
from bbrctl.report.render import render
from bbrctl.report.fake_runs import TABLE1, make_config, make_run
from bbrctl.report.table import Stat, build_table

REPO = Path(__file__).resolve().parent.parent
PAPER_METHODS = ["Baseline", "IOU", "GIOU", "CIOU", "FocalL1", "EIOU", "Focal-EIOU (v1)", "Focal-EIOU"]


def table1(tmp_path, **kw):
    return build_table(definitions.load("table", "1"), collect(tmp_path), **kw)


def row(tr, rid, source="ours"):
    return next(r for r in tr.rows if r.id == rid and r.source == source)


@pytest.fixture(scope="module")
def full_table1(tmp_path_factory):
    """Every Table 1 method with three finished seeds; AP = 30 + i + seed/10. Read-only."""
    root = tmp_path_factory.mktemp("full_table1")
    aps = {}
    for i, loss in enumerate(TABLE1):
        for seed in range(3):
            ap = 30.0 + i + seed / 10
            make_run(root, make_config(loss, seed=seed), ap=ap)
            aps.setdefault(loss, []).append(ap)
    return root, aps


# --------------------------------------------------------------------------- definitions

def test_shipped_definitions_load_and_table1_has_the_papers_eight_methods():
    kinds = {(k, key) for k, key, _, _ in definitions.listing()}
    for key in ("1", "2", "3"):
        assert ("table", key) in kinds
    for key in ("9a", "9b", "9c"):
        assert ("figure", key) in kinds
    for key in ("7", "8"):
        assert ("simulation", key) in kinds
    t1 = definitions.load("table", "1")
    assert [r.labels[0] for r in t1.rows] == PAPER_METHODS
    assert [r.match["loss.name"] for r in t1.rows] == list(TABLE1)
    assert t1.columns == ("AP", "AP50", "AP75", "APs", "APm", "APl")
    t3 = definitions.load("table", "3")
    assert t3.label_columns == ("Method", "Backbone")
    assert len(t3.rows) == 33 and not any(r.paper_only for r in t3.rows)   # every paper row is runnable (+ 11 stock-weight rows)
    assert {r.labels[0].removesuffix(" (stock weight)").rstrip("*") for r in t3.rows} == {"Faster R-CNN", "Mask R-CNN", "RetinaNet", "ATSS", "PAA", "DETR"}
    # Each starred row compares against its own detector and backbone.
    assert definitions.load("table", "3").rows[1].baseline == "faster_rcnn_r50"


def test_every_table_row_has_published_numbers_and_the_paper_values_are_exact():
    tabs = paper_tables()
    for key in ("1", "2", "3"):
        d = definitions.load("table", key)
        for r in d.rows:
            if r.paper is None:         # rows the paper has not (Table 3's stock-weight rows)
                assert r.id.endswith("_stock_weight")
                continue
            prow = tabs[d.paper].rows[r.paper]
            assert prow.labels == r.labels
            assert set(prow.values) == set(d.columns)
    assert tabs["table1"].rows["focal_eiou"].values == dict(zip(
        ("AP", "AP50", "AP75", "APs", "APm", "APl"), (37.5, 56.1, 40.0, 21.1, 40.9, 49.8)))
    # The two tables print different baseline AP50s; each keeps its own.
    assert tabs["table1"].rows["baseline"].values["AP50"] == 55.2
    assert tabs["table2"].rows["baseline"].values["AP50"] == 55.5
    assert tabs["table3"].rows["retinanet_r50_star"].values["APs"] == 21.3
    assert tabs["table3"].rows["faster_rcnn_x101"].values["APs"] == 24.0


@pytest.mark.parametrize("body, msg", [
    ("kind: table\nrows: []\n", "rows must be a non-empty list"),
    ("kind: table\nrows:\n  - {id: a, labels: [A]}\n", "needs a match"),
    ("kind: table\nrows:\n  - {id: a, labels: [A], match: {loss.name: x}}\n  - {id: a, labels: [B], match: {loss.name: y}}\n", "duplicate row id 'a'"),
    ("kind: table\nbaseline: zz\nrows:\n  - {id: a, labels: [A], match: {loss.name: x}}\n", "baseline 'zz'"),
    ("kind: table\nlabel_columns: [M, B]\nrows:\n  - {id: a, labels: [A], match: {loss.name: x}}\n", "1 labels"),
    ("kind: table\ndelta: AP99\nrows:\n  - {id: a, labels: [A], match: {loss.name: x}}\n", "delta 'AP99'"),
    ("kind: chart\n", "kind 'chart'"),
    ("kind: table\nrows: [\n", "not valid YAML"),
])
def test_bad_definitions_fail_with_one_line_naming_the_file(tmp_path, body, msg):
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "tablebad.yaml").write_text(body)
    with pytest.raises(UserError) as e:
        definitions.load("table", "bad", [tmp_path])
    assert msg in str(e.value) and "tablebad.yaml" in str(e.value) and "\n" not in str(e.value)


def test_unknown_table_lists_valid_ones():
    with pytest.raises(UserError, match=r"unknown table '4'; valid tables: 1, 2, 3"):
        definitions.load("table", "4")
    with pytest.raises(UserError, match="defines a figure"):
        definitions.load("table", "figure9a")


def test_user_defined_table_from_config_dir(tmp_path):
    conf = tmp_path / "conf"
    (conf / "report").mkdir(parents=True)
    (conf / "report" / "tablemine.yaml").write_text(
        "kind: table\ntitle: Mine\ncolumns: [AP, AP50]\nbaseline: b\n"
        "rows:\n  - {id: b, labels: [Base], match: {loss.name: baseline}}\n"
        "  - {id: e, labels: [E], match: {loss.name: eiou}}\n")
    runs = tmp_path / "runs"
    make_run(runs, make_config("baseline"), ap=20.0)
    make_run(runs, make_config("eiou"), ap=21.5)
    out = tmp_path / "mine.json"
    report_table("mine", runs=runs, config_dirs=[conf], out=str(out))
    data = json.loads(out.read_text())
    assert data["columns"] == ["AP", "AP50"]
    assert [r["metrics"]["AP"]["mean"] for r in data["rows"]] == [20.0, 21.5]
    assert data["rows"][1]["delta"]["value"] == pytest.approx(1.5)


# --------------------------------------------------------------------------- matching

def test_match_semantics():
    cfg = {"loss": {"name": "eiou", "params": {}}, "weight": 2.5, "flag": True, "steps": [1, 2], "x": None}
    assert matches(cfg, {"loss.name": "eiou", "weight": 2.5})
    assert matches(cfg, {"weight": 2.5000000000001})            # numeric, not textual
    assert not matches(cfg, {"weight": 2.4})
    assert not matches(cfg, {"loss.params.gamma": 0.5})          # missing key never matches a value
    assert matches(cfg, {"loss.params.gamma": None, "x": None})  # null matches missing or null
    assert matches(cfg, {"loss.name": ["iou", "eiou"]})          # a list means any of
    assert matches(cfg, {"steps": [1, 2]})                       # ... unless the config holds a list
    assert not equal(True, 1) and not equal(1, True)
    assert parse_where(["weight=2.5", "model.name=retinanet", "flag=true"]) == {
        "weight": 2.5, "model.name": "retinanet", "flag": True}
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_where(["weight"])


# --------------------------------------------------------------------------- aggregation

def test_seeds_aggregate_as_mean_std_and_n(full_table1):
    root, aps = full_table1
    tr = table1(root)
    assert [r.labels[0] for r in tr.rows] == PAPER_METHODS
    for r in tr.rows:
        vals = aps[r.id]
        st = r.stats["AP"]
        assert (r.state, r.n_done, r.n_runs, st.n) == ("done", 3, 3, 3)
        assert st.mean == pytest.approx(statistics.fmean(vals), abs=1e-12)
        assert st.std == pytest.approx(statistics.stdev(vals), abs=1e-12)
        assert r.stats["AP50"].mean == pytest.approx(statistics.fmean(vals) + 20)
        assert sorted(r.seeds) == [0, 1, 2]
    base, fe = row(tr, "baseline"), row(tr, "focal_eiou")
    diff, se = fe.delta
    assert diff == pytest.approx(fe.stats["AP"].mean - base.stats["AP"].mean)
    assert se == pytest.approx(math.sqrt(fe.stats["AP"].std ** 2 / 3 + base.stats["AP"].std ** 2 / 3))
    assert base.delta is None
    md = render(tr, "md")
    assert "| Focal-EIOU | 3 | 37.1 ± 0.1 |" in md
    # Every seed of Focal-EIoU is exactly 7.0 above the same seed of the baseline: a paired
    # interval of zero width, which excludes 0.
    assert "| Baseline | 3 | 30.1 ± 0.1 |" in md and "+7.0 [+7.0, +7.0]* |" in md
    assert fe.interval.test == "paired" and fe.interval.n_pairs == 3


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=12))
def test_stat_matches_statistics_module(values):
    s = Stat.of(values)
    assert s.n == len(values)
    assert s.mean == pytest.approx(statistics.fmean(values), abs=1e-9)
    if len(values) == 1:
        assert s.std is None
    else:
        assert s.std == pytest.approx(statistics.stdev(values), abs=1e-7)


def test_same_job_in_two_sweeps_counts_once(tmp_path):
    cfg = make_config("eiou", seed=0)
    make_run(tmp_path, cfg, ap=31.0, dirname="a")
    cfg2 = dict(cfg, sweep={"name": "fig9a", "params": {}})  # sweep is not result-relevant: same signature
    make_run(tmp_path, cfg2, ap=31.0, dirname="b")
    r = row(table1(tmp_path), "eiou")
    assert (r.n_done, r.n_runs) == (1, 1)


def test_one_setting_per_table_and_where_picks_another(tmp_path):
    # Eight methods on the small schedule, two on a longer one: the table shows the
    # small-schedule setting (more rows finished) and names the other in a note.
    for loss in TABLE1:
        make_run(tmp_path, make_config(loss), ap=30.0)
    for loss in ("baseline", "eiou"):
        make_run(tmp_path, make_config(loss, sweep="long", schedule__max_iter=900, schedule__name="longer"), ap=40.0)
    tr = table1(tmp_path)
    assert all(r.stats["AP"].mean == 30.0 for r in tr.rows)
    assert any("schedule.max_iter=900" in n and "schedule.name=longer" in n for n in tr.notes)
    tr2 = table1(tmp_path, where={"schedule.name": "longer"})
    assert row(tr2, "eiou").stats["AP"].mean == 40.0
    assert row(tr2, "iou").state == "missing"
    assert tr2.setting["schedule.name"] == "longer"


def test_other_configuration_in_a_row_is_footnoted(tmp_path):
    make_run(tmp_path, make_config("focal_eiou", seed=0), ap=33.0)
    make_run(tmp_path, make_config("focal_eiou", seed=1), ap=34.0)
    # Same loss and gamma but a changed loss parameter spelling only this run has.
    make_run(tmp_path, make_config("focal_eiou", seed=0, loss__params__extra=1), ap=50.0)
    r = row(table1(tmp_path), "focal_eiou")
    assert (r.n_done, r.stats["AP"].mean) == (2, 33.5)
    assert any("loss.params.extra=1" in n for n in r.notes["n"])


def test_weight_and_gamma_select_rows(tmp_path):
    make_run(tmp_path, make_config("eiou", weight=1.0), ap=28.0)
    make_run(tmp_path, make_config("focal_eiou", loss__params__gamma=2.0, gamma=2.0), ap=29.0)
    tr = table1(tmp_path)
    eiou, fe = row(tr, "eiou"), row(tr, "focal_eiou")
    assert eiou.state == fe.state == "missing"
    assert "differ only in weight=1" in eiou.notes["n"][0]
    assert "loss.params.gamma=2" in fe.notes["n"][0]


# --------------------------------------------------------------------------- incomplete runs

def test_missing_running_failed_and_half_written_runs(tmp_path):
    make_run(tmp_path, make_config("baseline", seed=0), ap=30.0)
    make_run(tmp_path, make_config("baseline", seed=1), state="running")
    make_run(tmp_path, make_config("iou"), state="running")
    make_run(tmp_path, make_config("giou"), state="failed", error="CUDA error: out of memory\nTraceback ...")
    make_run(tmp_path, make_config("ciou"), state="requeued")
    make_run(tmp_path, make_config("focal_l1"), state="pending")
    broken = make_run(tmp_path, make_config("eiou"), state="pending")
    (broken / "results.json").write_bytes(b'{"status": "done", "metr')  # a torn write
    unreadable = make_run(tmp_path, make_config("focal_eiou_v1"), state="pending")
    (unreadable / "job.json").write_bytes(b"\x00\x01 not json")
    # focal_eiou: no run at all
    tr = table1(tmp_path)
    states = {r.id: r.state for r in tr.rows}
    assert states == {"baseline": "partial", "iou": "running", "giou": "failed", "ciou": "requeued",
                      "focal_l1": "pending", "eiou": "incomplete", "focal_eiou_v1": "missing",
                      "focal_eiou": "missing"}
    md = render(tr, "md")
    lines = {l.split(" | ")[0].lstrip("| "): l for l in md.splitlines() if l.startswith("| ")}
    assert "| 1/2[" in lines["Baseline"] and "30.0 |" in lines["Baseline"]
    assert "running[" not in lines["IOU"].split(" | ")[1] and "| running |" in lines["IOU"]
    assert "| failed |" in lines["GIOU"] and "| missing |" in lines["Focal-EIOU"]
    notes = "\n".join(l for l in md.splitlines() if l.startswith("["))
    assert "seed 1 running (iteration 120/300)" in notes
    assert "CUDA error: out of memory Traceback" in notes           # one line, quoted
    assert "results.json could not be read" in notes
    assert "no run under" in notes and "loss.name: focal_eiou" in notes
    assert "bbrctl sweep +experiment=table1" in notes
    assert any("unreadable job.json" in n for n in tr.notes)
    # Machine-readable formats carry the same states.
    data = json.loads(render(tr, "json"))
    assert {r["id"]: r["state"] for r in data["rows"]} == states
    assert data["rows"][0]["states"] == {"done": 1, "running": 1}


def test_coco_minus_one_or_null_is_not_a_number(tmp_path):
    m = {"bbox": {"AP": 30.0, "AP50": 50.0, "AP75": 31.0, "APs": -1.0, "APm": 33.0, "APl": None}}
    make_run(tmp_path, make_config("baseline"), metrics=m)
    r = row(table1(tmp_path), "baseline")
    assert r.stats["APs"].n == r.stats["APl"].n == 0 and r.stats["AP"].mean == 30.0
    assert "| n/a[1] | 33.0 | n/a[1] |" in render(table1(tmp_path), "md")


# --------------------------------------------------------------------------- formats

def test_formats_agree(full_table1):
    root, aps = full_table1
    tr = table1(root, paper=True)
    md = render(tr, "md")
    body = [l for l in md.splitlines() if l.startswith("| ")]
    assert len(body) == 1 + 16 and all(l.count(" | ") == body[0].count(" | ") for l in body)
    assert body[0] == "| Method | Source | n | AP | AP50 | AP75 | APs | APm | APl | Δ AP |"
    assert "| Focal-EIOU | paper | 1 | 37.5 | 56.1 | 40.0 | 21.1 | 40.9 | 49.8 | +1.6 |" in md

    rows = list(csv.DictReader(io.StringIO(render(tr, "csv"))))
    ours = {r["Method"]: r for r in rows if r["source"] == "ours"}
    assert float(ours["EIOU"]["AP"]) == pytest.approx(statistics.fmean(aps["eiou"]))
    assert float(ours["EIOU"]["AP_std"]) == pytest.approx(statistics.stdev(aps["eiou"]))
    assert ours["EIOU"]["n"] == "3" and ours["EIOU"]["state"] == "done"
    paper = {r["Method"]: r for r in rows if r["source"] == "paper"}
    assert float(paper["Baseline"]["AP50"]) == 55.2 and paper["Baseline"]["AP_std"] == ""

    tex = render(tr, "latex")
    assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"$\pm$" in tex and r"$\Delta$ AP" in tex
    assert tex.count(r" \\") >= 17

    data = json.loads(render(tr, "json"))
    assert data["columns"] == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    fe = next(r for r in data["rows"] if r["id"] == "focal_eiou" and r["source"] == "ours")
    assert fe["metrics"]["AP"]["values"] == pytest.approx(aps["focal_eiou"])
    assert fe["n"] == 3 and len(fe["runs"]) == 3 and fe["labels"] == {"Method": "Focal-EIOU"}


def test_rich_terminal_table(full_table1):
    from rich.console import Console

    from bbrctl.report.render import print_rich

    console = Console(record=True, width=200, color_system=None)
    print_rich(table1(full_table1[0]), console=console)
    text = console.export_text()
    assert "Table 1" in text and "Focal-EIOU (v1)" in text and "37.1 ± 0.1" in text and "+7.0 [+7.0, +7.0]*" in text


def test_table3_cpu_runs_fill_every_detectors_rows(tmp_path):
    """The embedded-default Table 3 (one small backbone, DETR on its own schedule) fills the
    ResNet-50 rows of all six detectors; the ResNeXt rows stay missing."""
    for i, model in enumerate(("faster_rcnn", "mask_rcnn", "retinanet", "atss", "paa", "detr")):
        extra = {"schedule__name": "detr_cpu_small", "schedule__max_iter": 3000,
                 "schedule__optimizer": "adamw"} if model == "detr" else {}
        for loss, ap in (("baseline", 20.0 + i), ("focal_eiou", 21.0 + 2 * i)):
            make_run(tmp_path, make_config(loss, sweep="table3", model__name=model, backbone__name="resnet_tiny",
                                           **extra), ap=ap)
    d = definitions.load("table", "3")
    tr = build_table(d, collect(tmp_path))
    done = [r.id for r in tr.rows if r.state == "done"]
    assert len(done) == 12 and all(r.endswith(("_r50", "_r50_star")) for r in done)
    assert {r.id for r in tr.rows if r.state == "missing"} == {r.id for r in d.rows if "x101" in r.id
                                                                or r.id.endswith("_stock_weight")}
    assert row(tr, "detr_r50_star").delta[0] == pytest.approx(1.0 + 5)
    assert row(tr, "atss_r50_star").delta[0] == pytest.approx(1.0 + 3)
    assert tr.setting["backbone.name"] == "resnet_tiny" and tr.setting["schedule.name"] == "per row"
    assert not any("Other settings" in n for n in tr.notes)
    trp = build_table(d, collect(tmp_path), paper=True)
    atss = [r for r in trp.rows if r.id == "atss_r50"]
    assert [r.source for r in atss] == ["ours", "paper"] and atss[1].stats["AP"].mean == 39.1
    assert row(trp, "atss_r50_star", "paper").delta[0] == pytest.approx(0.6)
    assert row(trp, "detr_r50", "ours").stats["AP"].mean == 25.0


def test_table3_rows_say_the_backbone_they_ran_stock_weight_rows_and_paper_footnotes(tmp_path):
    from bbrctl.report.render import to_markdown

    for model in ("atss", "paa"):
        for loss, weight, ap in (("baseline", 1.0, 20.0), ("focal_eiou", 2.5, 24.0), ("focal_eiou", "stock", 21.5)):
            make_run(tmp_path, make_config(loss, sweep="table3", model__name=model, backbone__name="resnet_tiny",
                                           weight=weight), ap=ap)
    make_run(tmp_path, make_config("baseline", sweep="table3", model__name="paa", backbone__name="resnet50"), ap=40.0)
    d = definitions.load("table", "3")
    tr = build_table(d, collect(tmp_path), where={"backbone.name": "resnet_tiny"})
    assert row(tr, "atss_r50").labels == ("ATSS", "resnet_tiny")           # not ResNet-50-FPN
    assert row(tr, "paa_r50_star_stock_weight").labels == ("PAA* (stock weight)", "resnet_tiny")
    assert row(tr, "paa_r50_star_stock_weight").delta[0] == pytest.approx(1.5)   # the loss alone
    assert row(tr, "paa_r50_star").delta[0] == pytest.approx(4.0)                # loss + heavier box term
    assert row(tr, "atss_x101_dcn").labels == ("ATSS", "ResNeXt-64x4d-101-DCN")  # no run: the definition's label
    r50 = build_table(d, collect(tmp_path), where={"backbone.name": "resnet50"})
    assert row(r50, "paa_r50").labels == ("PAA", "ResNet-50-FPN")                # the paper's backbone: unchanged
    trp = build_table(d, collect(tmp_path), paper=True, where={"backbone.name": "resnet_tiny"})
    paper_star = row(trp, "atss_r50_star", "paper")
    assert paper_star.labels == ("ATSS*", "ResNet-50-FPN") and paper_star.stats["AP75"].mean == 45.7   # as printed
    assert any("typo" in t for t in paper_star.notes["AP75"])
    assert any("test-dev" in t and "multi-scale testing" in t for t in row(trp, "atss_x101_dcn", "paper").notes["AP"])
    assert any("random crops" in t for t in row(trp, "detr_r50", "paper").notes["AP"])
    md = to_markdown(trp)
    assert "resnet_tiny" in md and "probably a typo" in md and "ATSS* (stock weight)" in md


# --------------------------------------------------------------------------- the command

def _bbrctl(args, cwd, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "bbrctl", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_table_default_writes_reports_md_and_imports_nothing_heavy(full_table1, tmp_path_factory):
    root, _ = full_table1
    cwd = tmp_path_factory.mktemp("cwd")
    code = ("import sys\nfrom bbrctl.cli import main\n"
            f"try:\n    main(['report', '--table', '1', '--runs-root', {str(root)!r}])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'torchvision', 'matplotlib', 'wandb', 'hydra', 'omegaconf', 'scipy') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY=\n" in out.stdout
    assert "| Focal-EIOU | 3 | 37.1 ± 0.1 |" in out.stdout        # not a tty: Markdown on stdout
    written = (cwd / "reports" / "table1.md").read_text()
    assert written in out.stdout
    assert "wrote reports/table1.md" in out.stderr


def test_cli_json_to_stdout(full_table1, tmp_path_factory):
    root, aps = full_table1
    cwd = tmp_path_factory.mktemp("cwd")
    res = _bbrctl(["report", "--table", "1", "--runs-root", str(root), "--format", "json", "--out", "-", "--paper"], cwd)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert len(data["rows"]) == 16 and data["paper"] is True
    assert not (cwd / "reports").exists()


@pytest.mark.parametrize("args, msg", [
    (["--table", "1", "--format", "xlsx"], "unknown --format 'xlsx'; valid: md, csv, latex, json"),
    (["--table", "1", "--runs-root", "nope"], "nope' does not exist"),
    (["--table", "9"], "unknown table '9'"),
    (["--figure", "1"], "unknown figure '1'"),
    (["--table", "1", "--sweep", "nosuch"], "no runs of sweep 'nosuch'"),
    (["--table", "1", "--out", "t.txt"], "cannot tell the format"),
    ([], "exactly one of --table"),
    (["--table", "1", "--where", "noequals"], "KEY=VALUE"),
    (["--table", "1", "--precision", "9"], "--precision must be"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(full_table1, tmp_path, monkeypatch, capsys, args, msg):
    from bbrctl.cli import main

    root, _ = full_table1
    monkeypatch.chdir(tmp_path)
    if "--runs-root" not in args:
        args = [*args, "--runs-root", str(root)]
    with pytest.raises(SystemExit) as e:
        main(["report", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_sweep_filter(tmp_path):
    make_run(tmp_path, make_config("eiou", sweep="a"), ap=31.0)
    make_run(tmp_path, make_config("eiou", sweep="b", seed=1), ap=35.0)
    assert row(build_table(definitions.load("table", "1"), collect(tmp_path, "a")), "eiou").stats["AP"].mean == 31.0
    assert row(table1(tmp_path), "eiou").n_done == 2


def test_format_from_out_suffix(full_table1, tmp_path_factory):
    root, _ = full_table1
    d = tmp_path_factory.mktemp("out")
    for name, check in [("t.csv", lambda s: s.startswith("Method,source,state,n,")),
                        ("t.tex", lambda s: r"\begin{tabular}" in s),
                        ("t.json", lambda s: json.loads(s)["name"] == "table1"),
                        ("t.md", lambda s: s.startswith("## Table 1"))]:
        o = report_table("1", runs=root, out=str(d / name))
        assert check((d / name).read_text()) and o.files == [d / name]
    assert sorted(p.name for p in d.iterdir()) == ["t.csv", "t.json", "t.md", "t.tex"]  # no temp files left


# --------------------------------------------------------------------------- figures

def test_figure9a_points_csv_and_png(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    for w in (1.0, 2.5):
        for seed in (0, 1):
            make_run(runs, make_config("eiou", seed=seed, weight=w, sweep="fig9a"), ap=30 + w + seed)
    make_run(runs, make_config("eiou", seed=0, weight=3.5, sweep="fig9a"), state="running")
    make_run(runs, make_config("baseline", sweep="fig9a"), ap=29.0)
    o = report_figure("9a", runs=runs, out_dir=out)
    assert o.files == [out / "figure9a.png", out / "figure9a.csv"]
    assert (out / "figure9a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pts = list(csv.DictReader(io.StringIO((out / "figure9a.csv").read_text())))
    got = {(p["series"], p["weight"]): p for p in pts}
    assert float(got[("eiou", "1.0")]["AP"]) == pytest.approx(31.5)
    assert float(got[("eiou", "2.5")]["AP_std"]) == pytest.approx(statistics.stdev([32.5, 33.5]))
    assert got[("eiou", "3.5")]["state"] == "running" and got[("eiou", "3.5")]["AP"] == ""
    assert float(got[("reference", "")]["AP"]) == 29.0
    assert any("running" in n for p in o.result.points for n in p.notes)


def test_simulation_figure_collects_simulate_output(tmp_path):
    from bbrctl.store import atomic_write_json, atomic_write_text

    sim = tmp_path / "runs" / "simulate" / "setup2-abc"
    losses = ["iou", "eiou", "focal_eiou"]
    atomic_write_json(sim / "summary.json", {"setup": 2, "config": {"iterations": 3}, "losses": {
        l: {"final_error": 10.0 - i, "mean_iou": 0.8 + i / 100, "median_iou": 0.85, "frac_iou_gt_0.5": 0.99,
            "frac_iou_gt_0.75": 0.9, "frac_iou_gt_0.9": 0.5} for i, l in enumerate(losses)}})
    atomic_write_text(sim / "error_curves.csv", "iteration,iou,eiou,focal_eiou\n" +
                      "".join(f"{t},{100 - t},{90 - t},{80 - t}\n" for t in range(4)))
    atomic_write_text(sim / "iou_quantiles.csv", "loss,iteration,q0,q05,q25,q50,q75,q95,q100,mean\n" +
                      "".join(f"{l},{t},0.1,0.2,0.5,0.6,0.7,0.9,1.0,0.6\n" for l in losses for t in (0, 3)))
    out = tmp_path / "reports"
    o = report_figure("8", runs=tmp_path / "runs", out_dir=out, fmt="json")
    assert (out / "figure8.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "figure8.json").read_text())
    assert data["setup"] == 2 and data["losses"]["eiou"]["final_error"] == 9.0
    assert o.result.curves["focal_eiou"][-1] == (3, 77.0)
    with pytest.raises(UserError, match="no simulation output for setup 1"):
        report_figure("7", runs=tmp_path / "runs", out_dir=out)


# --------------------------------------------------------------------------- W&B

def test_wandb_offline_logs_the_table(full_table1, tmp_path_factory, monkeypatch):
    root, _ = full_table1
    out = tmp_path_factory.mktemp("rep")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    o = report_table("1", runs=root, out_dir=out, wandb=True)
    # The group its training runs were logged in: the sweep's name and the setting's hash.
    from bbrctl.config.wandb_settings import run_group
    from bbrctl.report.collect import collect

    groups = {run_group(r.config, r.sweep, r.dir.name) for r in collect(root).runs}
    assert o.wandb["mode"] == "offline" and [o.wandb["group"]] == list(groups) and o.wandb["group"].startswith("table1-")
    tables = list(Path(o.wandb["run_dir"]).rglob("*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"][:4] == ["Method", "source", "state", "n"]
    assert [r[0] for r in logged["data"]] == PAPER_METHODS


def test_figure9c_series_and_x_from_loss_params(tmp_path):
    from bbrctl.report.ablation_plots import build_figure

    for g in (0.25, 0.5, 2.0):
        for loss, ap in (("focal_eiou", 33.0), ("focal_eiou_star", 31.0)):
            make_run(tmp_path, make_config(loss, sweep="fig9c", gamma=g, loss__params__gamma=g), ap=ap - g)
    make_run(tmp_path, make_config("focal_eiou", sweep="fig9c", weight=1.0), ap=10.0)  # other weight: not a point
    fr = build_figure(definitions.load("figure", "9c"), collect(tmp_path))
    assert [(p.series, p.x) for p in fr.points] == [
        ("focal_eiou", 0.25), ("focal_eiou", 0.5), ("focal_eiou", 2.0),
        ("focal_eiou_star", 0.25), ("focal_eiou_star", 0.5), ("focal_eiou_star", 2.0)]
    assert [p.stats["AP"].mean for p in fr.points] == [32.75, 32.5, 31.0, 30.75, 30.5, 29.0]
    assert fr.reference is None  # no baseline run: no reference line
    assert [p.label for p in fr.points][::3] == ["Focal-EIOU", "Focal-EIOU*"]


def test_cli_list(capsys):
    from bbrctl.cli import main

    with pytest.raises(SystemExit) as e:
        main(["report", "--list"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--table 1 " in out and "--figure 9a " in out and "--figure 7 " in out


# --------------------------------------------------------------------------- Δ intervals and seed noise

STUDY = """
studies:
  - id: test-study
    table: table1
    date: "2026-01-02"
    machine: "test machine"
    threads: 1
    commit: abc1234
    match: {model.name: retinanet, backbone.name: resnet_tiny, data.name: shapes, schedule.max_iter: 600}
    metric: bbox
    rows:
      baseline: {seeds: [0, 1, 2], AP: [30.0, 31.0, 32.0]}
      eiou: {seeds: [0, 1, 2, 3], AP: [31.0, 31.5, 33.0, 32.5]}
"""


@pytest.fixture
def study_file(tmp_path, monkeypatch):
    from bbrctl.report import seed_noise

    path = tmp_path / "seed_study.yaml"
    path.write_text(STUDY)
    monkeypatch.setattr(seed_noise, "STUDY_FILE", path)
    seed_noise.studies.cache_clear()
    yield path
    seed_noise.studies.cache_clear()


def _noise_of_study():
    from bbrctl.report.stats import pooled_std

    return pooled_std([[30.0, 31.0, 32.0], [31.0, 31.5, 33.0, 32.5]])


def test_seeded_rows_get_paired_or_welch_intervals_and_markers(tmp_path, study_file):
    scipy_stats = pytest.importorskip("scipy.stats")
    base = [30.0, 31.2, 29.5]
    gain = [32.5, 33.0, 32.1]           # clearly above the baseline, seed by seed
    flat = [30.6, 31.4, 30.2, 29.9]     # seeds 0-3: not matched with the baseline's 0-2
    for s, v in enumerate(base):
        make_run(tmp_path, make_config("baseline", seed=s), ap=v)
    for s, v in enumerate(gain):
        make_run(tmp_path, make_config("focal_eiou", seed=s), ap=v)
    for s, v in enumerate(flat):
        make_run(tmp_path, make_config("eiou", seed=s), ap=v)
    tr = table1(tmp_path)
    fe, ei = row(tr, "focal_eiou"), row(tr, "eiou")
    ci = scipy_stats.ttest_rel(gain, base).confidence_interval(0.95)
    assert fe.interval.test == "paired" and fe.interval.excludes_zero
    assert (fe.interval.low, fe.interval.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    ci = scipy_stats.ttest_ind(flat, base, equal_var=False).confidence_interval(0.95)
    assert ei.interval.test == "welch" and ei.interval.excludes_zero is False
    assert (ei.interval.low, ei.interval.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    md = render(tr, "md")
    assert f"| +{statistics.fmean(gain) - statistics.fmean(base):.1f} [+{fe.interval.low:.1f}, +{fe.interval.high:.1f}]* |" in md
    lo, hi = ei.interval.low, ei.interval.high
    assert f"| {statistics.fmean(flat) - statistics.fmean(base):+.1f} [{lo:+.1f}, {hi:+.1f}] |" in md
    assert "paired t over the 3 seeds both rows ran (Focal-EIOU)" in md
    assert "Welch's t, seeds not matched (EIOU)" in md and "* the interval excludes 0" in md

    data = json.loads(render(tr, "json"))
    d = next(r for r in data["rows"] if r["id"] == "focal_eiou")["delta"]
    assert d["interval"]["test"] == "paired" and d["interval"]["excludes_zero"] is True
    assert d["interval"]["ci"] == [pytest.approx(fe.interval.low), pytest.approx(fe.interval.high)]
    assert d["interval"]["n_pairs"] == 3 and d["interval"]["df"] == 2
    rows = {r["Method"]: r for r in csv.DictReader(io.StringIO(render(tr, "csv")))}
    assert rows["EIOU"]["delta_AP_test"] == "welch" and rows["EIOU"]["delta_AP_excludes_zero"] == "false"
    assert float(rows["Focal-EIOU"]["delta_AP_ci_low"]) == pytest.approx(fe.interval.low)
    assert rows["Baseline"]["delta_AP_test"] == ""


def test_single_seed_rows_are_compared_with_the_seed_study(tmp_path, study_file):
    from bbrctl.report.stats import noise_threshold

    sigma, df = _noise_of_study()
    thr = noise_threshold(sigma, df, 1, 1)
    make_run(tmp_path, make_config("baseline"), ap=30.0)
    make_run(tmp_path, make_config("iou"), ap=30.0 + thr * 0.9)      # within noise
    make_run(tmp_path, make_config("giou"), ap=30.0 - thr * 1.1)     # beyond it
    tr = table1(tmp_path)
    assert tr.noise["study"] == "test-study" and tr.noise["sigma"] == pytest.approx(sigma) and tr.noise["df"] == df
    iou, giou = row(tr, "iou"), row(tr, "giou")
    assert iou.interval.test == "noise" and iou.interval.within_noise is True
    assert giou.interval.within_noise is False and giou.interval.excludes_zero is True
    md = render(tr, "md")
    assert f"| +{thr * 0.9:.1f}~ |" in md and f"| -{thr * 1.1:.1f}* |" in md
    assert f"σ = {sigma:.2f} AP" in md and f"{df} degrees of freedom" in md
    assert "2026-01-02" in md and "test machine" in md and "threads 1" in md and "commit abc1234" in md
    assert "~ |Δ| is below t·σ·√(1/n + 1/n_base)" in md and f"(= {thr:.1f} for two single runs)" in md
    data = json.loads(render(tr, "json"))
    assert data["seed_noise"]["study"] == "test-study"
    iv = next(r for r in data["rows"] if r["id"] == "iou")["delta"]["interval"]
    assert iv["test"] == "noise" and iv["within_noise"] is True and iv["noise_threshold"] == pytest.approx(thr)
    tex = render(tr, "latex")
    assert r"$\sigma$" in tex


def test_a_seed_study_of_another_setting_is_not_used(tmp_path, study_file):
    make_run(tmp_path, make_config("baseline", schedule__max_iter=300), ap=30.0)
    make_run(tmp_path, make_config("iou", schedule__max_iter=300), ap=31.0)
    tr = table1(tmp_path)
    assert tr.noise is None and row(tr, "iou").interval is None
    md = render(tr, "md")
    assert "| +1.0 |" in md and "no seed study of this setting ships with bbrctl" in md


def test_mixed_seed_counts_use_the_study_for_the_single_seed_rows(tmp_path, study_file):
    from bbrctl.report.stats import noise_threshold

    sigma, df = _noise_of_study()
    for s, v in enumerate([30.0, 31.0, 29.0]):
        make_run(tmp_path, make_config("baseline", seed=s), ap=v)
    make_run(tmp_path, make_config("ciou"), ap=31.0)
    r = row(table1(tmp_path), "ciou")
    assert r.interval.test == "noise"
    assert r.interval.threshold == pytest.approx(noise_threshold(sigma, df, 1, 3))


def test_shipped_seed_study_is_consistent():
    from bbrctl.report import seed_noise

    seed_noise.studies.cache_clear()
    found = seed_noise.studies()
    assert found, "bbrctl/data/seed_study.yaml ships at least one study"
    for s in found:
        assert s.table and s.match and s.rows
        for key in ("date", "machine", "threads", "commit", "torch"):
            assert s.meta.get(key) not in (None, ""), f"{s.id} lacks {key}"
        sigma, df = s.sigma("AP")
        assert sigma > 0 and df >= 4
