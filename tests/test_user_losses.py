"""A user's own loss (bbrctl.losses.user): the three ways in, refusals, signatures, detectors.

The end-to-end path a user follows (an installed package, a local and a SLURM sweep, a
report row) is tests/test_own_loss_guide.py.
"""

from __future__ import annotations

import copy
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_cli

import user_loss_pkg
from bbrctl import config as C
from bbrctl.errors import UserError
from bbrctl.losses import SPECS, LossParamError, get_loss, register_loss, user

torch.set_num_threads(1)


@pytest.fixture
def clean_registry():
    """Registrations made by a test are removed afterwards (the registry is process-wide)."""
    before_specs, before_fns = dict(SPECS), dict(user._FUNCTIONS)
    yield
    for name in set(SPECS) - set(before_specs):
        del SPECS[name]
    SPECS.update(before_specs)
    for d in (user._FUNCTIONS, user._TARGETS, user._WEIGHTS):
        for name in set(d) - set(before_fns):
            del d[name]
    user._PROBED.clear()


BOXES_P = torch.tensor([[10.0, 10.0, 50.0, 60.0], [0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 15.0, 15.0]])
BOXES_T = torch.tensor([[12.0, 8.0, 55.0, 58.0], [5.0, 5.0, 25.0, 30.0], [0.0, 0.0, 20.0, 20.0]])


# --------------------------------------------------------------------------- register_loss


def test_register_loss_makes_get_loss_and_check_params_work(clean_registry):
    spec = register_loss("corner", user_loss_pkg.corner_l1, space="boxes", param_ranges={"scale": [0.0, 10.0]})
    assert spec.space == "boxes" and spec.params["scale"].default == 1.0
    loss = get_loss("corner", scale=2.0)
    assert loss.space == "boxes" and loss.params == {"scale": 2.0} and loss.default_reduction == "mean"
    want = user_loss_pkg.corner_l1(BOXES_P, BOXES_T, reduction="none", scale=2.0)
    torch.testing.assert_close(loss(BOXES_P, BOXES_T, reduction="none"), want)
    torch.testing.assert_close(loss(BOXES_P, BOXES_T), want.mean())
    w = torch.tensor([1.0, 0.0, 2.0])
    torch.testing.assert_close(loss(BOXES_P, BOXES_T, weight=w, reduction="sum"), (want * w).sum())
    with pytest.raises(LossParamError, match=r"corner.scale=11 is out of range; valid: \[0, 10\]"):
        get_loss("corner", scale=11.0)
    with pytest.raises(LossParamError, match="has no parameter 'sigma'; valid parameters: scale"):
        get_loss("corner", sigma=1.0)
    assert user.target_of("corner") == "user_loss_pkg:corner_l1"


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="eiou"), "'eiou' is a built-in loss; give your loss another name"),
    (dict(name="baseline"), "is a built-in loss"),
    (dict(name="bad/name"), "is not valid: 1-64 letters, digits and _"),
    (dict(fn=3), "is not callable"),
    (dict(space="xywh"), "space='xywh' is not valid; valid: boxes, deltas"),
    (dict(params={"sigma": 1.0}), "declares parameter 'sigma', which its function does not take as a keyword"),
    (dict(param_ranges={"scale": [5.0, 10.0]}), "corner.scale=1 is out of range; valid: [5, 10]"),
    (dict(param_ranges={"scale": [3, 1]}), "param_ranges.scale=[3, 1] is not valid"),
    (dict(param_ranges={"other": [0, 1]}), "param_ranges names 'other', which is not one of its parameters"),
])
def test_register_loss_refuses_in_one_line(clean_registry, kwargs, message):
    args = dict(name="corner", fn=user_loss_pkg.corner_l1, space="boxes")
    args.update(kwargs)
    with pytest.raises(LossParamError) as e:
        register_loss(args.pop("name"), args.pop("fn"), **args)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "corner" not in SPECS


def test_a_function_from_main_is_registered_but_has_no_target(clean_registry):
    ns: dict = {}
    exec("def f(pred, target, weight=None, reduction='mean'):\n    return (pred - target).abs().sum()", ns)
    ns["f"].__module__ = "__main__"
    register_loss("local_only", ns["f"])
    assert user.target_of("local_only") is None
    assert "target" not in user.config_node("local_only")["loss"]


# --------------------------------------------------------------------------- the detectors


def _pairs():
    import test_dense_detectors as dense
    import test_detr as detr
    import test_models as tv

    for model in tv.MODELS:
        yield model, lambda loss, m=model: tv.losses_of(tv.hooked(m, loss))
    for model in ("atss", "paa"):
        yield model, lambda loss, m=model: _dense_losses(dense, m, loss)
    yield "detr", lambda loss: _detr_losses(detr, loss)


def _dense_losses(dense, model, loss):
    m = dense.hooked(model, loss)
    m.train()
    images, targets = dense.batch()
    torch.manual_seed(1)
    return m(images, targets)


def _detr_losses(detr, loss):
    m = detr.hooked(loss)
    m.train()
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 24.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 34.0]]), "labels": torch.tensor([1])}]
    torch.manual_seed(1)
    return m(images, targets)


@pytest.mark.parametrize("model, run", list(_pairs()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_detector_gives_a_user_loss_exactly_what_it_gives_the_built_in(clean_registry, model, run):
    """A user's loss takes the built-in's path in every head: same positives, space, normaliser."""
    register_loss("user_eiou", user_loss_pkg.user_eiou, space="boxes")
    register_loss("user_l1", user_loss_pkg.user_l1, space="deltas")
    pairs = [("eiou", "user_eiou")] + ([("l1", "user_l1")] if model != "detr" else [])
    for builtin, mine in pairs:
        a, b = run(builtin), run(mine)
        assert set(a) == set(b)
        for k in a:
            torch.testing.assert_close(a[k], b[k], msg=f"{model}: {k} differs for {mine} vs {builtin}")


# --------------------------------------------------------------------------- config files


def _loss_yaml(d: Path, name: str, body: str) -> None:
    (d / "loss").mkdir(parents=True, exist_ok=True)
    (d / "loss" / f"{name}.yaml").write_text("# @package _global_\n" + textwrap.dedent(body))


CORNER = """\
loss:
  name: corner
  target: "user_loss_pkg:corner_l1"
  space: boxes
  params: {scale: 1.0}
  param_ranges: {scale: [0.0, 10.0]}
weight: 2.5
"""


def test_a_config_file_declares_a_loss_and_the_signature_holds_its_code(clean_registry, tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    src = Path(user_loss_pkg.__file__).read_text()
    (pkg / "mylossmod.py").write_text(src)
    monkeypatch.syspath_prepend(str(pkg))
    cfgdir = tmp_path / "cfg"
    _loss_yaml(cfgdir, "corner", CORNER.replace("user_loss_pkg", "mylossmod"))
    cfg = C.to_container(C.compose(["loss=corner", "loss.params.scale=2"], [cfgdir]))
    assert cfg["loss"]["target"] == "mylossmod:corner_l1" and get_loss("corner", scale=3).params == {"scale": 3.0}
    view = C.result_view(cfg)
    assert view["loss"]["code"]["target"] == "mylossmod:corner_l1"
    sig = C.signature(cfg)
    assert C.signature(copy.deepcopy(cfg)) == sig
    # An edit anywhere in the loss's module is a new experiment.
    (pkg / "mylossmod.py").write_text(src + "\n# tuned\n")
    assert C.signature(cfg) != sig
    (pkg / "mylossmod.py").write_text(src)
    assert C.signature(cfg) == sig


def test_built_in_signatures_are_unchanged():
    """No key is added for built-in losses: run dirs made before user losses existed are still found.

    The literal is what bbrctl 0e3f850 (before user losses) gave this config.
    """
    cfg = {"loss": {"name": "eiou", "params": {}}, "weight": 2.5, "seed": 0, "model": {"name": "retinanet"},
           "launcher": {"name": "local"}}
    assert "code" not in C.result_view(cfg)["loss"]
    assert C.signature(cfg) == "dd1dd75dd0"


BAD_MODULES = {
    "raises": "raise RuntimeError('broken at import')\n",
    "okmod": "def f(pred, target, weight=None, reduction='mean', scale=1.0):\n    return (pred - target).abs().sum()\n"
             "G = 5\n",
}


@pytest.mark.parametrize("loss_body, message", [
    (CORNER.replace("user_loss_pkg", "nosuchpkg.losses"), "no module named 'nosuchpkg'"),
    (CORNER.replace("user_loss_pkg", "raises"), "importing 'raises' raised RuntimeError: broken at import"),
    (CORNER.replace("user_loss_pkg:corner_l1", "okmod:G"), "loss.target='okmod:G' is not callable (a int)"),
    (CORNER.replace("user_loss_pkg:corner_l1", "okmod:missing"), "module 'okmod' has no attribute 'missing'"),
    (CORNER.replace("scale: 1.0}", "scale: 1.0, sigma: 2}"), "declares parameter 'sigma', which its function does not take"),
    (CORNER.replace("scale: 1.0}", "scale: 12.0}"), "corner.scale=12 is out of range; valid: [0, 10]"),
    (CORNER.replace("name: corner", "name: giou"), "'giou' is a built-in loss"),
    (CORNER.replace("corner_l1", "nan_loss").replace("params: {scale: 1.0}", "params: {}").replace(
        "  param_ranges: {scale: [0.0, 10.0]}\n", ""), "returned nan with reduction='none'; a loss must be finite"),
    (CORNER.replace("space: boxes", "space: xywh"), "loss.space='xywh' is not valid: must be one of boxes, deltas"),
])
def test_bad_user_losses_are_refused_before_anything_exists(tmp_path, loss_body, message):
    """`bbrctl sweep` (no --dry-run): one line, exit 2, no runs/ directory, nothing submitted."""
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, text in BAD_MODULES.items():
        (mods / f"{name}.py").write_text(text)
    tests_dir = Path(__file__).parent
    cfgdir = tmp_path / "cfg"
    _loss_yaml(cfgdir, "corner", loss_body)
    work = tmp_path / "work"
    work.mkdir()
    env = {**__import__("os").environ, "PYTHONPATH": f"{mods}:{tests_dir}"}
    out = run_cli(["sweep", "loss=corner,eiou", "data=shapes_tiny", "schedule=smoke", "--config-dir", str(cfgdir)],
                  work, env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert list(work.iterdir()) == []


def test_an_out_of_range_override_of_a_user_loss_is_refused(clean_registry, tmp_path):
    cfgdir = tmp_path / "cfg"
    _loss_yaml(cfgdir, "corner", CORNER)
    with pytest.raises(UserError, match=r"corner.scale=20 is out of range; valid: \[0, 10\]"):
        C.compose(["loss=corner", "loss.params.scale=20"], [cfgdir])
    with pytest.raises(UserError, match="declares parameter 'typo'"):
        C.compose(["loss=corner", "+loss.params.typo=1"], [cfgdir])


# --------------------------------------------------------------------------- entry points


def _dist(site: Path, name: str, module: str, body: str, entry_points: str) -> None:
    """A minimal installed distribution: what pip writes, enough for importlib.metadata."""
    (site / f"{module}.py").write_text(textwrap.dedent(body))
    info = site / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bbrctl.losses]\n" + entry_points)


def test_an_entry_point_loss_is_found_by_name_and_composes_to_its_declaration(clean_registry, tmp_path,
                                                                              monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    _dist(site, "ep_demo", "ep_demo_losses", """\
        def halved(pred, target, weight=None, reduction="mean", factor=0.5):
            per = (pred - target).abs().sum(dim=1) * factor
            return per if reduction == "none" else per.mean()
        halved.bbrctl_loss = {"space": "deltas", "param_ranges": {"factor": [0.0, 1.0]}, "weight": 1.0}
        """, "halved = ep_demo_losses:halved\n")
    monkeypatch.syspath_prepend(str(site))
    assert "halved" in user.entry_point_names() and "halved" in C.group_options("loss")
    assert "ep_demo_losses" not in sys.modules          # listing imports nothing
    loss = get_loss("halved")
    assert loss.space == "deltas" and loss.params == {"factor": 0.5}
    cfg = C.to_container(C.compose(["loss=halved", "loss.params.factor=0.25"]))
    assert cfg["loss"] == {"name": "halved", "target": "ep_demo_losses:halved", "space": "deltas",
                           "params": {"factor": 0.25}, "param_ranges": {"factor": [0.0, 1.0]}}
    assert cfg["weight"] == 1.0
    with pytest.raises(UserError, match=r"halved.factor=2 is out of range; valid: \[0, 1\]"):
        C.compose(["loss=halved", "loss.params.factor=2"])
    assert C.result_view(cfg)["loss"]["code"]["target"] == "ep_demo_losses:halved"


def test_a_registered_loss_is_a_loss_option_too(clean_registry):
    register_loss("corner", user_loss_pkg.corner_l1, space="boxes", weight=3.0)
    cfg = C.to_container(C.compose(["loss=corner"]))
    assert cfg["loss"]["target"] == "user_loss_pkg:corner_l1" and cfg["weight"] == 3.0
    # A job in another process validates from the config alone: clear the registration.
    del SPECS["corner"], user._FUNCTIONS["corner"]
    C.validate(cfg)
    assert user.is_user_loss("corner")


# --------------------------------------------------------------------------- simulate


def test_the_simulation_runs_a_user_loss_beside_the_paper_losses(clean_registry, tmp_path):
    from bbrctl.simulate.protocol import make_config

    register_loss("corner", user_loss_pkg.corner_l1, space="boxes")
    cfg = make_config(setup=2, losses="eiou,corner", iterations=4, points=2)
    assert cfg.to_dict()["loss_code"]["corner"]["target"] == "user_loss_pkg:corner_l1"
    assert "loss_code" not in make_config(setup=2, losses="eiou", iterations=4, points=2).to_dict()
    from bbrctl.simulate.run import run_setup

    run_dir, summary, reused = run_setup(cfg, device="cpu", out=str(tmp_path / "sim"), plots=False,
                                         show_progress=False)
    assert not reused and set(summary["losses"]) == {"eiou", "corner"}
    assert summary["losses"]["corner"] != summary["losses"]["eiou"]
    register_loss("deltas_loss", user_loss_pkg.user_l1, space="deltas")
    with pytest.raises(UserError, match="'deltas_loss' is not an IoU-family loss"):
        make_config(setup=2, losses="deltas_loss")


def test_built_in_configs_and_sweeps_still_import_no_torch(tmp_path):
    """Looking for user losses (registry, entry-point names) must not cost built-in users torch."""
    code = ("import sys\nfrom bbrctl import config as C, sweep as S\n"
            "C.to_container(C.compose(['loss=eiou']))\nS.expand(['loss=eiou,giou', 'seed=0,1'])\n"
            "C.group_options('loss')\nassert 'torch' not in sys.modules, 'torch imported'\n")
    out = __import__("subprocess").run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                       timeout=120)
    assert out.returncode == 0, out.stderr


def test_a_job_whose_loss_was_edited_after_it_was_signed_refuses_to_run(clean_registry, tmp_path, monkeypatch):
    from bbrctl import store
    from bbrctl.train import check_signature

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    src = Path(user_loss_pkg.__file__).read_text()
    (pkg / "editedmod.py").write_text(src)
    monkeypatch.syspath_prepend(str(pkg))
    cfgdir = tmp_path / "cfg"
    _loss_yaml(cfgdir, "corner", CORNER.replace("user_loss_pkg", "editedmod"))
    cfg = C.to_container(C.compose(["loss=corner"], [cfgdir]))
    run_dir = tmp_path / "runs" / "r"
    store.prepare_run_dir(run_dir, cfg, signature=C.signature(cfg), name="corner", sweep=None)
    assert check_signature(run_dir, cfg) == C.signature(cfg)
    (pkg / "editedmod.py").write_text(src.replace("* scale", "* scale * 2"))
    with pytest.raises(UserError, match=r"the code of loss 'corner' \(editedmod:corner_l1\) or .* changed after the "
                                        r"job was signed .* run the sweep again"):
        check_signature(run_dir, cfg)


_finite = __import__("hypothesis").strategies.floats(-1e6, 1e6, allow_nan=False)


@__import__("hypothesis").given(a=_finite, b=_finite, v=_finite)
def test_a_declared_range_accepts_exactly_its_closed_interval(a, b, v):
    low, high = min(a, b), max(a, b)
    default = (low + high) / 2
    try:
        register_loss("ranged", user_loss_pkg.corner_l1, params={"scale": default}, param_ranges={"scale": [low, high]})
        inside = low - 1e-8 <= v <= high + 1e-8
        if inside:
            got = get_loss("ranged", scale=v).params["scale"]
            assert low <= got <= high and abs(got - v) <= 1e-8
        else:
            with pytest.raises(LossParamError, match="is out of range"):
                get_loss("ranged", scale=v)
    finally:
        for d in (SPECS, user._FUNCTIONS, user._TARGETS, user._WEIGHTS):
            d.pop("ranged", None)


def test_a_registered_option_lasts_one_composition_only(clean_registry, tmp_path):
    """The ConfigStore node of `loss=<registered>` must not become the schema of a later loss/<name>.yaml."""
    import warnings

    register_loss("corner", user_loss_pkg.corner_l1, space="boxes", weight=3.0, param_ranges={"scale": [0, 100]})
    assert C.to_container(C.compose(["loss=corner"]))["weight"] == 3.0
    cfgdir = tmp_path / "cfg"
    _loss_yaml(cfgdir, "corner", CORNER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = C.to_container(C.compose(["loss=corner"], [cfgdir]))
    assert cfg["weight"] == 2.5 and cfg["loss"]["param_ranges"] == {"scale": [0.0, 10.0]}


def test_only_numeric_keyword_defaults_become_parameters(clean_registry):
    def f(pred, target, weight=None, reduction="mean", k=2, mode="sum", flag=True, gate=None, eps=1e-7):
        return (pred - target).abs().sum(dim=1) * k if reduction == "none" else (pred - target).abs().mean() * k

    f.__module__ = "__main__"
    spec = register_loss("numeric", f)
    assert sorted(spec.params) == ["eps", "gate", "k"]
    with pytest.raises(LossParamError, match="parameter mode='max' must be a number"):
        register_loss("numeric2", f, params={"mode": "max"})


def test_the_probe_runs_once_per_parameter_set(clean_registry, tmp_path, monkeypatch):
    from bbrctl.losses import probe as P

    calls = []
    real = P.probe_loss
    monkeypatch.setattr(P, "probe_loss", lambda *a, **k: (calls.append(a[3]), real(*a, **k)))
    cfgdir = tmp_path / "cfg"
    _loss_yaml(cfgdir, "corner", CORNER)
    from bbrctl.sweep import expand

    plan = expand(["loss=corner", "loss.params.scale=1,2", "seed=0,1,2"], [cfgdir], runs_root=str(tmp_path / "r"))
    assert len(plan.jobs) == 6
    assert sorted(c["scale"] for c in calls) == [1.0, 2.0]


@pytest.mark.parametrize("overrides, message", [
    (["loss=focal_eiou", "loss.params.gama=1"], "loss 'focal_eiou' has no parameter 'gama'; valid parameters: gamma"),
    (["loss=corner", "loss.params.typo=1"], "loss 'corner' has no parameter 'typo'; valid parameters: scale"),
])
def test_setting_a_parameter_a_loss_lacks_names_the_losses_parameters(clean_registry, overrides, message):
    register_loss("corner", user_loss_pkg.corner_l1)
    with pytest.raises(UserError) as e:
        C.compose(overrides)
    assert str(e.value) == message
