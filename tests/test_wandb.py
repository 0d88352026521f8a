"""W&B as users expect it, checked by decoding what wandb wrote offline (tests/wandb_offline.py).

* identity: a random run id kept in the run directory; a directory deleted and run again
  gets a new W&B run; group, tags and config as the sink documents;
* resume: steps an earlier process logged are skipped, with a clean stop and after SIGKILL;
* an offline sweep of two jobs submitted as a SLURM array (a stand-in sbatch; the batch
  script itself is run here, setup lines included): two training runs in the sweep's group
  with curves, final metrics, an artifact, an image panel and per-category AP; the report's
  W&B table traces every row to its runs; a secret in launcher.setup is in no file bbrctl
  or wandb wrote except the batch script; WANDB_DIR is respected;
* ``report --figure detections``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from wandb_offline import Segment, segments

from bbrctl.detection.tracking import wandb_run as ws


def _offline(monkeypatch, wandb_dir: Path | None = None):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    if wandb_dir is not None:
        monkeypatch.setenv("WANDB_DIR", str(wandb_dir))


# --------------------------------------------------------------------------- identity


def test_run_id_is_random_kept_in_the_run_dir_and_new_after_a_delete(tmp_path):
    d = tmp_path / "runs" / "s" / "loss=giou-abc"
    d.mkdir(parents=True)
    assert ws.run_id(d) is None
    first = ws.load_state(d)["id"]
    assert ws.run_id(d) == first and ws.load_state(d)["id"] == first and len(first) == 16
    other = tmp_path / "runs" / "s" / "loss=eiou-def"
    other.mkdir()
    assert ws.load_state(other)["id"] != first
    shutil.rmtree(d)
    d.mkdir()
    assert ws.load_state(d)["id"] != first  # same path, new directory: a new W&B run


def test_group_tags_and_config(tmp_path):
    sweep_dir = tmp_path / "runs" / "abl"
    run_dir = sweep_dir / "loss=giou-gamma=0.5-abc"
    run_dir.mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps({"swept_keys": ["loss", "gamma"]}))
    job = {"sweep": "abl", "signature": "abc", "overrides": ["loss=giou", "gamma=0.5", "data=shapes_tiny"]}
    cfg = {"loss": {"name": "giou"}, "wandb": {"group": None, "tags": ["mine"]},
           "launcher": {"name": "slurm", "setup": ["export WANDB_API_KEY=s3cr3tkey123"], "partition": "gpu"}}
    # The sweep's name and its setting: one table's rows together, another setting apart.
    group = ws.run_group(cfg, job, run_dir)
    assert group.startswith("abl-") and len(group) == len("abl-") + 6
    assert ws.run_group({**cfg, "loss": {"name": "eiou"}, "seed": 3}, job, run_dir) == group
    assert ws.run_group({**cfg, "data": {"name": "coco"}}, job, run_dir) != group
    assert ws.run_group({**cfg, "wandb": {"group": "mygroup"}}, job, run_dir) == "mygroup"
    assert ws.run_group(cfg, {"sweep": None}, run_dir) == run_dir.name
    assert ws.run_tags(cfg, job, run_dir) == ["loss=giou", "gamma=0.5", "mine"]
    conf = ws.run_config(cfg, job, run_dir)
    assert conf["launcher"] == {"name": "slurm"} and "s3cr3t" not in json.dumps(conf)
    assert conf["bbrctl"]["signature"] == "abc" and conf["bbrctl"]["sweep"] == "abl"


# --------------------------------------------------------------------------- resume, fast


def _sink(run_dir: Path, cfg_extra: dict | None = None) -> ws.WandbSink:
    cfg = {"wandb": {"mode": "offline", "project": "t", "images": 0}, "launcher": {"name": "local"},
           **(cfg_extra or {})}
    return ws.WandbSink(cfg, run_dir, job={"sweep": None})


def test_a_resumed_sink_continues_the_run_and_skips_logged_steps(tmp_path, monkeypatch):
    _offline(monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    s1 = _sink(run_dir)
    s1.log_history([(i, {"train/loss": 1.0 / i}) for i in range(1, 6)])
    s1.finish()
    # The next process resumed from a checkpoint at step 3: it redoes 4 and 5, then goes on.
    s2 = _sink(run_dir)
    assert s2.resume_after == 5
    s2.log_history([(i, {"train/loss": 2.0 / i}) for i in range(4, 9)])
    s2.log({"eval/bbox/AP": 12.5}, step=8)
    s2.finish()
    seg1, seg2 = segments(run_dir / "wandb")
    assert seg1.run.run_id == seg2.run.run_id == ws.run_id(run_dir)
    assert seg1.steps == [1, 2, 3, 4, 5] and seg2.steps == [6, 7, 8]
    assert seg2.history[0]["train/loss"] == pytest.approx(2.0 / 6)
    assert seg2.history[-1]["eval/bbox/AP"] == 12.5 and seg2.history[-1]["train/loss"] == pytest.approx(0.25)

    shutil.rmtree(run_dir)  # deleted and run again at the same path: a new W&B run from step 1
    run_dir.mkdir()
    s3 = _sink(run_dir)
    s3.log_history([(1, {"train/loss": 3.0})])
    s3.finish()
    (seg3,) = segments(run_dir / "wandb")
    assert seg3.run.run_id != seg1.run.run_id and seg3.steps == [1]


def test_wandb_dir_is_respected(tmp_path, monkeypatch):
    _offline(monkeypatch, tmp_path / "elsewhere")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    s = _sink(run_dir)
    s.log({"train/loss": 1.0}, step=1)
    s.finish()
    assert not (run_dir / "wandb").exists()
    (seg,) = segments(tmp_path / "elsewhere" / "wandb")
    assert seg.run.run_id == ws.run_id(run_dir) and seg.steps == [1]


# --------------------------------------------------------------------------- resume after SIGKILL


TRAIN = ["data=shapes_tiny", "schedule=smoke", "schedule.max_iter=40", "schedule.checkpoint_period=5",
         "schedule.log_period=1", "schedule.steps=[30]", "wandb.mode=offline", "wandb.images=0"]


def _env(**extra) -> dict:
    # WANDB_SERVICE: an in-process test's wandb service, which a child would share (and in
    # which a killed child's run would stay "in use").
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_DIR", "WANDB_SERVICE")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_killed_and_resumed_logs_no_step_twice(tmp_path):
    from helpers import wait_until

    cmd = [sys.executable, "-m", "bbrctl", "train", *TRAIN, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def far_enough():
            if proc.poll() is not None:
                return True  # ended early: reported below
            states = list((tmp_path / "runs" / "train").glob(f"*/{ws.STATE}"))
            ckpts = list((tmp_path / "runs" / "train").glob("*/checkpoints/last.pt"))
            # Logged well past the first checkpoint (5), so the resume redoes logged steps.
            return bool(states and ckpts) and json.loads(states[0].read_text())["last_step"] >= 8
        assert wait_until(far_enough, 240, every=0.02)
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    (run_dir,) = (tmp_path / "runs" / "train").iterdir()
    assert not (run_dir / "results.json").exists()
    logged_before = json.loads((run_dir / ws.STATE).read_text())["last_step"]
    assert 8 <= logged_before < 40
    time.sleep(1.0)  # let the killed run's wandb service finish its file
    out = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming after step" in (run_dir / "train.log").read_text()
    first, second = segments(run_dir / "wandb", wait_s=3)
    rid = ws.run_id(run_dir)
    # Both segments belong to the same W&B run. The killed one may be torn or even empty:
    # offline, wandb's service buffers the file, and a SIGKILL loses what it had not written.
    assert first.dir.name.endswith(f"-{rid}") and second.dir.name.endswith(f"-{rid}")
    assert second.run.run_id == rid and (first.run is None or first.run.run_id == rid)
    steps = first.steps + second.steps
    assert len(steps) == len(set(steps)), "a step was logged twice"
    # The resumed process redid iterations from the checkpoint (at most 5 back) but logged
    # only what came after what had been handed to W&B, through to the end.
    assert second.steps == list(range(logged_before + 1, 41))
    assert all(s <= logged_before for s in first.steps)
    assert "eval/bbox/AP" in second.history[-1] and second.exit_code == 0


# --------------------------------------------------------------------------- the sweep


SECRETS = ("wbkey0123456789abcdef0123456789abcdef0123", "hf_tok9Zq8Xw7Vu6Ts5Rr4Qq3Pp2")
SETUP = f'launcher.setup=["export WANDB_API_KEY={SECRETS[0]}","export HF_TOKEN={SECRETS[1]}","echo setup ran"]'


@pytest.fixture(scope="module")
def offline_sweep(tmp_path_factory):
    """Two jobs as a SLURM array (stand-in sbatch), each task run here with its batch script."""
    from helpers import run_cli

    base = tmp_path_factory.mktemp("wbsweep")
    work, wandb_dir, fakebin = base / "work", base / "wandb-dir", base / "fakebin"
    for d in (work, wandb_dir, fakebin):
        d.mkdir()
    (fakebin / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --test-only ]; then cat > /dev/null; exit 0; fi
        printf '%s\\n' "$@" > {base}/submitted.argv
        echo 700
    """))
    for name in ("squeue", "scontrol", "sacct"):
        (fakebin / name).write_text("#!/bin/sh\nexit 0\n")
    for f in fakebin.iterdir():
        f.chmod(0o755)
    wb_home = base / "wandb-home"
    env = _env(PATH=f"{fakebin}:{os.environ['PATH']}", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true",
               WANDB_DATA_DIR=str(wb_home / "data"), WANDB_CACHE_DIR=str(wb_home / "cache"),
               WANDB_CONFIG_DIR=str(wb_home / "config"), WANDB_ARTIFACT_DIR=str(wb_home / "artifacts"),
               BBRCTL_DATA_DIR=str(tmp_path_factory.getbasetemp() / "data"))
    env.pop("WANDB_API_KEY", None)
    args = ["sweep", "loss=giou,focal_eiou", "data=shapes_tiny", "schedule=smoke", "schedule.eval_period=2",
            "launcher=slurm", SETUP, "wandb.mode=offline", "--name", "wbsweep"]
    out = run_cli(args, work, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    script = Path((base / "submitted.argv").read_text().splitlines()[-1])
    for task in (0, 1):
        r = subprocess.run(["bash", str(script)], cwd=work, capture_output=True, text=True, timeout=300,
                           env={**env, "SLURM_ARRAY_JOB_ID": "700", "SLURM_ARRAY_TASK_ID": str(task)})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "setup ran" in r.stdout
    sweep_dir = work / "runs" / "wbsweep"
    run_dirs = sorted(p for p in sweep_dir.iterdir() if (p / "job.json").is_file())
    report = run_cli(["report", "--table", "1", "--sweep", "wbsweep", "--wandb", "--out", "reports/t1.md"], work,
                     env=env, timeout=120)
    assert report.returncode == 0, report.stdout + report.stderr
    det = run_cli(["report", "--figure", "detections", *[x for d in run_dirs for x in ("--run", str(d))],
                   "--images", "2", "--score-threshold", "0", "--out", "reports/det.png"], work, env=env, timeout=180)
    assert det.returncode == 0, det.stdout + det.stderr
    return {"base": base, "work": work, "wandb_dir": wandb_dir, "sweep_dir": sweep_dir, "run_dirs": run_dirs,
            "script": script, "report": report, "det": det, "wb_home": wb_home}


def _train_segments(s) -> dict[str, Segment]:
    out = {}
    for seg in segments(s["wandb_dir"] / "wandb"):
        if seg.run.job_type == "train":
            out[seg.run.display_name] = seg
    return out


@pytest.mark.slow
def test_sweep_runs_share_the_sweep_group_with_curves_metrics_artifact_and_panel(offline_sweep):
    s = offline_sweep
    segs = _train_segments(s)
    assert sorted(segs) == sorted(d.name for d in s["run_dirs"]) and len(segs) == 2
    for d in s["run_dirs"]:
        seg = segs[d.name]
        job = json.loads((d / "job.json").read_text())
        results = json.loads((d / "results.json").read_text())
        assert seg.run.run_id == ws.run_id(d) and seg.run.job_type == "train"
        assert seg.run.run_group == ws.run_group(job["config"], job, d) and seg.run.run_group.startswith("wbsweep-")
        # iteration is every curve's x axis; AP's summary is its maximum.
        assert seg.metrics["eval/*"].step_metric == "iteration" and seg.metrics["eval/*"].summary.max
        assert seg.metrics["train/*"].step_metric == "iteration"
        assert all(h["iteration"] == h["_step"] for h in seg.history)
        assert list(seg.run.tags) == [f"loss={job['config']['loss']['name']}"]
        assert seg.config["bbrctl"]["signature"] == job["signature"] and seg.config["bbrctl"]["sweep"] == "wbsweep"
        assert seg.config["launcher"] == {"name": "slurm"}
        # Curves: every training term, lr and timings at each of the 4 iterations; eval at 2 and 4.
        assert seg.steps == [1, 2, 3, 4]
        terms = {k for k in seg.history[0] if k.startswith("train/")}
        assert terms >= {"train/loss", "train/lr", "train/time", "train/data_time", "train/classification",
                         "train/bbox_regression"}
        assert all(terms <= set(h) for h in seg.history)
        assert [h["_step"] for h in seg.history if "eval/bbox/AP" in h] == [2, 4]
        # Final metrics in the summary, equal to results.json.
        for k, v in results["metrics"]["bbox"].items():
            assert seg.summary[f"final/bbox/{k}"] == pytest.approx(v)
        # Per-category AP table (5 shape classes) and the image panel, both at the last step.
        (table,) = seg.media("per_category/bbox")
        tj = json.loads(table.read_text())
        assert tj["columns"] == ["category_id", "category", "AP", "AP50", "AP75"] and len(tj["data"]) == 5
        assert [r[1] for r in tj["data"]] == [r["name"] for r in results["per_category"]["bbox"]]
        (panel,) = seg.media("val/detections")
        assert panel.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert seg.history[-1]["val/detections"]["width"] > 300
        # The artifact: results.json and config.yaml; no model artifact offline by default.
        (art,) = [a for a in seg.artifacts if a.type == "bbrctl-run"]
        assert art.name == d.name.replace("=", "_")
        assert sorted(c.path for c in art.manifest.contents) == ["config.yaml", "results.json"]
        assert not [a for a in seg.artifacts if a.type == "model"]
        assert seg.exit_code == 0
    # WANDB_DIR is where everything went.
    assert not any((d / "wandb").exists() for d in s["run_dirs"])


@pytest.mark.slow
def test_the_report_table_traces_every_row_to_its_runs(offline_sweep):
    s = offline_sweep
    (rep,) = [seg for seg in segments(s["wandb_dir"] / "wandb") if seg.run.job_type == "report"]
    groups = {seg.run.run_group for seg in _train_segments(s).values()}
    assert len(groups) == 1 and rep.run.run_group in groups and rep.run.display_name == "report-table1"
    (table,) = rep.media("table1")
    tj = json.loads(table.read_text())
    cols = tj["columns"]
    assert cols[-4:] == ["run_dirs", "signatures", "wandb_run_ids", "seeds"]
    by_dir = {str(d.resolve()): d for d in s["run_dirs"]}
    traced = 0
    for row in tj["data"]:
        cell = dict(zip(cols, row))
        if not cell["run_dirs"]:
            assert cell["n_runs"] in (0, None) and cell["wandb_run_ids"] == ""
            continue
        dirs = [by_dir[str((s["work"] / p).resolve())] for p in cell["run_dirs"].split(", ")]  # relative to cwd
        assert cell["wandb_run_ids"].split(", ") == [ws.run_id(d) for d in dirs]
        assert cell["signatures"].split(", ") == [json.loads((d / "job.json").read_text())["signature"] for d in dirs]
        assert cell["seeds"] == "0"
        traced += len(dirs)
    assert traced == 2  # GIoU's and Focal-EIoU's rows, one run each
    assert "wandb sync" in s["report"].stderr and str(s["wandb_dir"]) in s["report"].stderr


@pytest.mark.slow
def test_a_secret_in_launcher_setup_is_only_in_the_batch_script(offline_sweep):
    s = offline_sweep
    script_text = s["script"].read_text()
    assert all(x in script_text for x in SECRETS)  # the script has to run the real lines
    roots = [s["work"], s["wandb_dir"], s["wb_home"]]
    checked, found = 0, []
    for root in roots:
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                checked += 1
                if any(x.encode() in data for x in SECRETS) and p != s["script"]:
                    found.append(p)
    assert not found
    assert checked > 40
    # Setup lines are withheld whole (not pattern-redacted): their count and a hash stand for them.
    cfg = (s["run_dirs"][0] / "config.yaml").read_text()
    assert "3 launcher.setup line(s) withheld, sha256 " in cfg and "echo setup ran" not in cfg


@pytest.mark.slow
def test_report_figure_detections_draws_the_runs_side_by_side(offline_sweep):
    from PIL import Image

    s = offline_sweep
    png = s["work"] / "reports" / "det.png"
    with Image.open(png) as im:
        w, h = im.size
    # Two run columns and two image rows of 2.6-inch panels at 120 dpi, plus the legend line.
    assert (w, h) == (round(2 * 2.6 * 120), round((2 * 2.6 + 0.5) * 120))
    assert "loss=giou" in s["det"].stdout and "loss=focal_eiou" in s["det"].stdout
    assert "detections drawn" in s["det"].stdout


def test_report_figure_detections_rejects_bad_input(tmp_path):
    from helpers import run_cli

    for args, needle in [([], "needs --run DIR"), (["--run", str(tmp_path)], "is not a run directory"),
                         (["--run", str(tmp_path), "--images", "0"], "--images must be")]:
        out = run_cli(["report", "--figure", "detections", *args], tmp_path)
        assert out.returncode == 2, out.stderr
        assert needle in out.stderr and out.stderr.count("\n") == 1, out.stderr
    out = run_cli(["report", "--table", "1", "--run", str(tmp_path)], tmp_path)
    assert out.returncode == 2 and "--run is for --figure detections" in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _colour_pixels(png: bytes, rgb: tuple[int, int, int], tol: int = 8) -> int:
    import io

    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return int((np.abs(a - np.array(rgb)).max(axis=2) <= tol).sum())


def test_draw_grid_draws_detections_above_the_threshold_in_their_class_colour():
    import numpy as np
    from matplotlib import colormaps

    from bbrctl.detection.tracking.pictures import Panel, draw_grid, wrap

    image = np.full((100, 100, 3), 128, dtype=np.uint8)
    gt = np.array([[10.0, 10.0, 60.0, 60.0]])
    boxes = np.array([[20.0, 20.0, 80.0, 90.0], [5.0, 5.0, 30.0, 30.0]])
    colour = tuple(int(round(c * 255)) for c in colormaps["tab10"](2)[:3])  # class 3

    def panel(scores):
        return Panel(image, gt, np.array([1]), boxes, np.array(scores), np.array([3, 3]), title="x")

    shown, hidden = panel([0.9, 0.1]), panel([0.2, 0.1])
    png_shown = draw_grid([[shown]], {3: "triangle"}, score_threshold=0.3)
    png_hidden = draw_grid([[hidden]], {3: "triangle"}, score_threshold=0.3)
    assert shown.shown == 1 and hidden.shown == 0
    assert _colour_pixels(png_shown, colour) > 200 and _colour_pixels(png_hidden, colour) == 0
    # The ground truth is drawn either way (its black underlay adds black pixels).
    no_gt = Panel(image, np.zeros((0, 4)), np.zeros(0), boxes, np.array([0.2, 0.1]), np.array([3, 3]), title="x")
    assert _colour_pixels(png_hidden, (0, 0, 0), 40) > _colour_pixels(draw_grid([[no_gt]], {}), (0, 0, 0), 40) + 100
    grid = wrap([shown] * 5)
    assert [len(r) for r in grid] == [3, 3] and grid[1][2] is None


@pytest.mark.parametrize("wcfg,needle", [({"images": 40}, "wandb.images=40 is not valid: must be an integer in [0, 32]"),
                                         ({"images": True}, "wandb.images"),
                                         ({"log_checkpoint": "yes"}, "wandb.log_checkpoint='yes' is not valid: must be null or true or false"),
                                         ({"tags": "a"}, "wandb.tags='a' is not valid: must be a list"),
                                         ({"group": ""}, "wandb.group='' is not valid: must be null or a name")])
def test_bad_wandb_settings_are_one_line_errors(wcfg, needle):
    from bbrctl.config.schema import WANDB, check_group
    from bbrctl.errors import UserError

    with pytest.raises(UserError) as e:
        check_group({"mode": "offline", **wcfg}, WANDB, "wandb")
    assert needle in str(e.value) and "\n" not in str(e.value)
    check_group({"mode": "offline", "images": 0, "log_checkpoint": True, "tags": ["x"], "group": "g"}, WANDB, "wandb")


def test_train_refuses_bad_wandb_settings_before_creating_anything(tmp_path):
    from helpers import run_cli

    out = run_cli(["train", "data=shapes_tiny", "schedule=smoke", "wandb.images=-1"], tmp_path)
    assert out.returncode == 2 and "wandb.images" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_on_a_real_cluster_the_secret_is_only_in_the_batch_script(slurm_cluster, tmp_path):
    """The same check where SLURM itself runs the array and writes its logs under runs/."""
    from helpers import run_cli

    wandb_dir = tmp_path / "wandb-dir"
    env = _env(WANDB_DIR=str(wandb_dir), WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    args = ["sweep", "loss=giou,eiou", "data=shapes_tiny", "schedule=smoke", "launcher=slurm",
            "launcher.cpus_per_task=1", "launcher.time=20", SETUP, "wandb.mode=offline", "--name", "wbslurm", "--wait"]
    out = run_cli(args, tmp_path, env=env, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep_dir = tmp_path / "runs" / "wbslurm"
    (script,) = (sweep_dir / "slurm").glob("launch-*.sbatch")
    assert all(x in script.read_text() for x in SECRETS)
    from helpers import wait_until

    logs = lambda: [p for p in (sweep_dir / "slurm" / "logs").glob("*.out") if "train exited" in p.read_text()]
    assert wait_until(lambda: len(logs()) == 2, 60)
    assert all("setup ran" in p.read_text() for p in logs())
    leaked = [p for root in (tmp_path,) for p in root.rglob("*") if p.is_file() and not p.is_symlink()
              and p != script and any(x.encode() in p.read_bytes() for x in SECRETS)]
    assert not leaked
    assert len(segments(wandb_dir / "wandb")) == 2


# --------------------------------------------------------------------------- settings, model artifact


def test_online_without_a_key_says_it_goes_offline(tmp_path, monkeypatch):
    _offline(monkeypatch)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sink = ws.WandbSink({"wandb": {"mode": "online", "project": "t", "images": 0}, "launcher": {"name": "local"}},
                        run_dir, job={"sweep": None})
    try:
        assert sink.mode == "offline"
        log = (run_dir / "train.log").read_text()
        assert "W&B: online mode but no API key for api.wandb.ai" in log and "logging offline" in log
    finally:
        sink.finish()


def test_one_resolver_honours_the_server_of_wandb_base_url(tmp_path, monkeypatch):
    from bbrctl.config import wandb_settings as W
    from bbrctl.report.wandb_table import resolve_mode as report_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine wandb.mylab.org login user password k3y\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    assert not W.has_api_key() and ws.resolve_mode("online") == "offline" == report_mode({"mode": "online"})
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.mylab.org")
    assert W.has_api_key() and ws.resolve_mode("online") == "online" == report_mode({"mode": "online"})
    assert report_mode({"mode": "disabled"}) == "offline"  # --wandb asked for it explicitly


def test_segments_name_every_offline_part_of_a_run(tmp_path, monkeypatch):
    _offline(monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for first in (1, 4):
        time.sleep(1.1)  # wandb names a segment by its start second: two in one second share a folder
        s = _sink(run_dir)
        s.log_history([(i, {"train/loss": 1.0}) for i in range(first, first + 3)])
        described = s.describe()
        s.finish()
    assert len(described["segments"]) == 2
    assert [Path(p) for p in described["segments"]] == [seg.dir for seg in segments(run_dir / "wandb")]


@pytest.mark.parametrize("final_ap, aliases", [(30.0, ["latest", "best"]), (20.0, ["latest"])])
def test_the_final_checkpoint_is_a_model_artifact_with_latest_and_best(tmp_path, monkeypatch, final_ap, aliases):
    _offline(monkeypatch)
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run_dir / "metrics.jsonl").write_text(
        json.dumps({"iteration": 2, "eval": {"bbox": {"AP": 25.0}}}) + "\n"
        + json.dumps({"iteration": 4, "eval": {"bbox": {"AP": final_ap}}}) + "\n")
    s = _sink(run_dir, {"wandb": {"mode": "offline", "project": "t", "images": 0, "log_checkpoint": True}})
    results = {"metrics": {"bbox": {"AP": final_ap}}, "iteration": 4}
    assert s.logs_model() and s.model_aliases(results) == aliases
    s.finish_run(results)
    s.finish()
    (seg,) = segments(run_dir / "wandb")
    (model,) = [a for a in seg.artifacts if a.type == "model"]
    assert model.name == "model-run" and [c.path for c in model.manifest.contents] == ["last.pt"]
    assert sorted(model.aliases) == sorted(aliases)
    default = _sink(run_dir)
    assert not default.logs_model()  # null: only runs that go online
    default.finish()
