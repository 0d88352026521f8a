import subprocess
import sys

import pytest

from bbrctl import config as C
from bbrctl.errors import UserError


def test_shorthand_keys_reach_the_loss():
    cfg = C.compose(["loss=focal_eiou", "gamma=0.25", "weight=2.5", "model=retinanet"])
    assert cfg.loss.name == "focal_eiou"
    assert cfg.loss.params.gamma == 0.25
    assert cfg.weight == 2.5
    assert cfg.model.name == "retinanet"


def test_loss_file_sets_paper_default_weight_and_cli_wins():
    assert C.compose(["loss=baseline"]).weight == 1.0
    assert C.compose(["loss=focal_eiou"]).weight == 2.5
    assert C.compose(["loss=focal_eiou", "weight=1.5"]).weight == 1.5


def test_unknown_group_option_lists_choices():
    with pytest.raises(UserError) as e:
        C.compose(["loss=nope"])
    msg = str(e.value)
    assert "nope" in msg and "focal_eiou" in msg and "baseline" in msg
    assert "\n" not in msg


def test_unknown_key_is_rejected():
    with pytest.raises(UserError, match="unknown config key 'nosuchkey'"):
        C.compose(["nosuchkey=1"])


@pytest.mark.parametrize("bad", ["gamma=-1", "weight=-2", "loss=focal_eiou gamma=abc"])
def test_out_of_range_values(bad):
    with pytest.raises(UserError):
        C.compose(bad.split())


def test_sweep_values_are_refused_outside_sweep():
    with pytest.raises(UserError, match="bbrctl sweep"):
        C.compose(["gamma=0.1,0.2"])


def test_user_config_dir_adds_options(tmp_path):
    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "my_eiou.yaml").write_text("# @package _global_\nloss:\n  name: eiou\n  params: {}\nweight: 3.0\n")
    cfg = C.compose(["loss=my_eiou"], [tmp_path])
    assert cfg.loss.name == "eiou" and cfg.weight == 3.0
    assert "my_eiou" in C.group_options("loss", [tmp_path])


def test_signature_ignores_non_result_keys_only():
    a = C.compose(["loss=focal_eiou"])
    b = C.compose(["loss=focal_eiou", "data.num_workers=7", "launcher=slurm"])
    c = C.compose(["loss=focal_eiou", "gamma=1.0"])
    assert C.signature(a) == C.signature(b)
    assert C.signature(a) != C.signature(c)


def test_compose_works_from_any_directory(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bbrctl", "config", "loss=focal_eiou", "gamma=0.25"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "gamma: 0.25" in out.stdout and "name: focal_eiou" in out.stdout


def test_cli_bad_option_exits_2_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bbrctl", "config", "loss=nope"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "valid loss options" in out.stderr


def test_light_commands_do_not_import_heavy_modules():
    code = ("import sys\nfrom bbrctl.cli import main\n"
            "try:\n    main(['config', 'loss=focal_eiou'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'torchvision', 'wandb', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
