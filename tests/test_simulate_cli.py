"""`bbrctl simulate` end to end: outputs, figures, bad input, atomic run directories."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bbrctl.cli import main
from bbrctl.simulate import single as S
from bbrctl.simulate.curves import FIG4_BETAS, focal_l1_curves, focal_l1_gradient_formula

SUMMARY_KEYS = {"final_error", "mean_iou", "median_iou", "frac_iou_gt_0.5", "frac_iou_gt_0.75", "frac_iou_gt_0.9"}


def cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_setup2_writes_curves_quantiles_summary_and_figures(tmp_path, capsys):
    out = tmp_path / "s2"
    code, stdout, err = cli(["simulate", "--setup", "2", "--points", "20", "--iterations", "30", "--out", str(out), "-q",
                             "--losses", "giou,eiou,focal_eiou"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".bbrctl-simulation", "error_curves.csv", "error_curves.png",
                                                     "iou_boxplots.png", "iou_quantiles.csv", "summary.json"]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    three = ["giou", "eiou", "focal_eiou"]
    assert summary["setup"] == 2 and summary["pairs"] == 20 * 9 * 3 and summary["config"]["losses"] == three
    assert set(summary["losses"]) == set(three)
    for block in summary["losses"].values():
        assert SUMMARY_KEYS <= set(block)
    with open(out / "error_curves.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["iteration", *three] and len(rows) == 1 + 31
    assert [int(r[0]) for r in rows[1:]] == list(range(31))
    assert float(rows[-1][3]) == pytest.approx(summary["losses"]["focal_eiou"]["final_error"], rel=1e-9)
    with open(out / "iou_quantiles.csv", newline="") as f:
        q = list(csv.DictReader(f))
    assert list(q[0])[:10] == ["loss", "iteration", "q0", "q05", "q25", "q50", "q75", "q95", "q100", "mean"]
    last_eiou = [r for r in q if r["loss"] == "eiou"][-1]
    assert int(last_eiou["iteration"]) == 30
    assert float(last_eiou["q50"]) == pytest.approx(summary["losses"]["eiou"]["median_iou"])
    for r in q:
        vals = [float(r[k]) for k in ("q0", "q05", "q25", "q50", "q75", "q95", "q100")]
        assert vals == sorted(vals) and 0 <= vals[0] and vals[-1] <= 1
    # The summary table: one row per loss, on one screen.
    assert "Focal-EIoU" in stdout and "EIoU" in stdout and str(out) in stdout.replace("\n", "")
    assert len(stdout.splitlines()) <= 24


def test_default_dir_is_signed_and_reused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["simulate", "--setup", "2", "--points", "5", "--iterations", "5", "--no-plots", "-q"]
    code, out1, err = cli(argv, capsys)
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs" / "simulate").iterdir()
    assert run_dir.name.startswith("setup2-")
    summary = json.loads((run_dir / "summary.json").read_text())
    six = ["iou", "giou", "diou", "ciou", "eiou", "focal_eiou"]
    assert summary["config"]["losses"] == six and set(summary["losses"]) == set(six)
    assert all(line.split()[0] in out1 for line in ("IoU", "GIoU", "DIoU", "CIoU", "EIoU", "Focal-EIoU"))
    before = (run_dir / "summary.json").read_bytes()
    code, out2, _ = cli(argv, capsys)
    assert code == 0 and "reused" in out2 and (run_dir / "summary.json").read_bytes() == before
    code, out3, _ = cli([*argv, "--force"], capsys)
    assert code == 0 and "wrote" in out3
    assert len(list((tmp_path / "runs" / "simulate").iterdir())) == 1       # no staging leftovers
    code, _, _ = cli([*argv[:-2], "--seed", "1", "--no-plots", "-q"], capsys)
    assert len(list((tmp_path / "runs" / "simulate").iterdir())) == 2


@pytest.mark.parametrize("argv, needle", [
    (["--setup", "3"], "--setup 3"),
    (["--losses", "eiou,l1"], "'l1'"),
    (["--losses", "eiuo"], "valid: iou, giou"),
    (["--gamma", "-0.5"], "--gamma"),
    (["--losses", "focal_eiou_v1", "--beta", "0.2"], "--beta"),
    (["--iterations", "0"], "--iterations"),
    (["--points", "0"], "--points"),
    (["--target-area", "-1"], "--target-area"),
    (["--dtype", "half"], "--dtype"),
    (["--device", "tpu"], "--device"),
    (["--focal-reduction", "sum"], "--focal-reduction"),
    (["--figure", "7"], "--figure 7"),
    (["--figure", "1", "--setup", "1"], "not both"),
    (["--figure", "1", "--anchor", "1,2,3"], "--anchor"),
    (["--figure", "1", "--anchor", "0,0,-1,2"], "--anchor"),
    (["--figure", "4", "--losses", "eiou"], "do not apply"),
    (["--anchor", "0,0,1,1"], "--figure 1 only"),
    (["--threads", "0"], "--threads"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [] if "--figure" in argv else ["--points", "2", "--iterations", "2", "--no-plots", "-q"]
    code, stdout, err = cli(["simulate", *base, *argv], capsys)   # later options win
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bbrctl: error:") and needle in lines[0], err
    assert tree(tmp_path) == []


def test_cuda_request_without_cuda_is_a_user_error(tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(["simulate", "--setup", "2", "--device", "cuda", "--no-plots", "-q"], capsys)
    assert code == 2 and "CUDA is not available" in err and tree(tmp_path) == []


def test_explicit_out_is_not_overwritten_without_force(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    argv = ["simulate", "--setup", "2", "--points", "2", "--iterations", "3", "--out", str(out), "--no-plots", "-q"]
    code, _, err = cli(argv, capsys)
    assert code == 2 and "--force" in err and (out / "precious.txt").read_text() == "keep"
    # --force replaces simulation outputs only: someone's data is never deleted.
    code, _, err = cli([*argv, "--force"], capsys)
    assert code == 2 and "not a bbrctl simulation" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    sim = tmp_path / "sim"
    argv = [*argv[:-4], "--out", str(sim), "--no-plots", "-q"]
    assert cli(argv, capsys)[0] == 0
    (sim / "summary.json").write_text("{}")     # an older run of it, to be replaced
    code, _, err = cli([*argv, "--force"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in sim.iterdir()) == [".bbrctl-simulation", "error_curves.csv", "iou_quantiles.csv",
                                                     "summary.json"]
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = cli([*argv[:-4], "--out", str(f), "--no-plots", "-q"], capsys)
    assert code == 2 and "not a directory" in err


def test_a_failure_while_writing_leaves_nothing(tmp_path, capsys, monkeypatch):
    from bbrctl.simulate import figures

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(figures, "iou_boxplots", boom)
    out = tmp_path / "deep" / "er" / "run"
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["simulate", "--setup", "2", "--points", "2", "--iterations", "3", "--out", str(out), "-q"])
    assert tree(tmp_path) == []


def test_figure1_reproduces_the_papers_ciou_numbers(tmp_path, capsys):
    out = tmp_path / "f1"
    code, stdout, err = cli(["simulate", "--figure", "1", "--out", str(out)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [".bbrctl-simulation", "figure.json", "figure1.csv", "figure1.png"]
    meta = json.loads((out / "figure.json").read_text())
    ciou = meta["boxes"]["ciou"]["at_check"]
    assert ciou["iteration"] == 50
    # Paper, Sec. 3.1.3: w = 1.64, h = 2.84 after 50 iterations (anchor centre calibrated, see single.py).
    assert ciou["w"] == pytest.approx(1.64, abs=0.03) and ciou["h"] == pytest.approx(2.84, abs=0.03)
    # EIoU moves (w, h) towards the target's (1, 1); CIoU away from it.
    e = meta["boxes"]["eiou"]["final"]
    c = meta["boxes"]["ciou"]["final"]
    assert abs(e["w"] - 1) + abs(e["h"] - 1) < 0.7 < abs(c["w"] - 1) + abs(c["h"] - 1)
    assert "1.64" in stdout and "CIoU" in stdout


def test_figure1_without_the_2_minus_iou_factor_misses_the_papers_numbers():
    cfg = S.make_single_config(scale_step=False)
    ciou = S.checkpoints(cfg, S.trajectories(cfg))["ciou"]["at_check"]
    assert abs(ciou["w"] - 1.64) > 0.15


def test_figure4_gradient_is_eq8_and_peaks_at_1(tmp_path, capsys):
    data = focal_l1_curves(FIG4_BETAS, n=201)
    for beta in FIG4_BETAS:
        for x, g in zip(data["x"], data["grad"][beta]):
            assert g == pytest.approx(focal_l1_gradient_formula(x, beta), abs=1e-9)
        assert max(data["grad"][beta]) == pytest.approx(1.0, abs=1e-4)
        assert data["loss"][beta][0] == 0.0
    for fig in ("4", "5"):
        out = tmp_path / f"f{fig}"
        code, _, err = cli(["simulate", "--figure", fig, "--out", str(out)], capsys)
        assert code == 0, err
        assert (out / f"figure{fig}.png").stat().st_size > 10_000 and (out / f"figure{fig}.csv").is_file()


def test_light_modules_do_not_import_torch_or_matplotlib():
    code = ("import sys, bbrctl.cli, bbrctl.simulate.protocol, bbrctl.simulate.output, bbrctl.simulate.single, "
            "bbrctl.simulate.run; heavy = [m for m in ('torch', 'matplotlib', 'wandb') if m in sys.modules]; "
            "print(','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ""


def test_auto_threads_leaves_busy_cores_alone(monkeypatch):
    from bbrctl.simulate import run as R

    monkeypatch.setattr(R.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(R.os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert R.auto_threads(2) == 2
    monkeypatch.setattr(R.os, "getloadavg", lambda: (1.1, 0.0, 0.0))
    assert R.auto_threads(2) == 1
    monkeypatch.setattr(R.os, "getloadavg", lambda: (7.0, 0.0, 0.0))
    assert R.auto_threads(2) == 1
    monkeypatch.setattr(R.os, "cpu_count", lambda: 16)
    assert R.auto_threads(8) == 8
