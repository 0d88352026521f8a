"""A Hydra user's habits get a one-line pointer to what bbrctl uses instead (exit 2, nothing made)."""

from __future__ import annotations

import pytest

def run(capsys, *args):
    from bbrctl.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("args, says", [
    (["config", "--cfg", "job"], "`bbrctl config OVERRIDES` prints the composed config"),
    (["config", "--cfg=job"], "`bbrctl config OVERRIDES` prints the composed config"),
    (["sweep", "-m", "loss=eiou,giou"], "`bbrctl sweep a=1,2 b=x,y` runs every combination"),
    (["train", "--multirun"], "`bbrctl sweep a=1,2 b=x,y` runs every combination"),
    (["sweep", "--config-path", "conf"], "--config-dir DIR"),
    (["sweep", "--config-name", "x"], "+experiment=NAME"),
])
def test_hydra_flags_point_to_bbrctl(capsys, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, *args)
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert out.err.startswith("bbrctl: error: bbrctl has no ") and says in out.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("override, says", [
    ("hydra.sweep.dir=/tmp/x", "use --runs-root DIR (and sweep.name=NAME for the folder)"),
    ("hydra.run.dir=out", "use --runs-root DIR"),
    ("hydra/launcher=submitit_slurm", "launcher=local or launcher=slurm"),
    ("hydra/sweeper=optuna", "bbrctl sweep expands comma lists"),
])
@pytest.mark.parametrize("command", [["config"], ["sweep", "--dry-run"]])
def test_hydra_settings_point_to_bbrctl(capsys, tmp_path, monkeypatch, command, override, says):
    monkeypatch.chdir(tmp_path)
    code, out = run(capsys, *command, override)
    assert code == 2 and len(out.err.strip().splitlines()) == 1
    assert "hydra.* settings are managed by bbrctl" in out.err and says in out.err
    assert list(tmp_path.iterdir()) == []



def test_sweep_help_lists_the_preset_files_and_quotes_its_examples(capsys):
    import re
    import subprocess
    from pathlib import Path

    import bbrctl

    code, out = run(capsys, "sweep", "--help")
    text = " ".join(out.out.split())
    shipped = sorted(p.stem for p in (Path(bbrctl.__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml")
                     if not p.stem.startswith("tune_"))
    listed = re.search(r"\+experiment=([\w|]+)", text.replace("| ", "|")).group(1).split("|")
    assert code == 0 and sorted(listed) == shipped
    example = re.search(r"grammar \(quoted for the shell\): (.*?)\.\s", text).group(1)
    # As typed at a bash prompt, the examples parse (unquoted range(0,3) is a syntax error).
    assert subprocess.run(["bash", "-n", "-c", f"bbrctl sweep {example}"]).returncode == 0
    assert subprocess.run(["bash", "-n", "-c", "bbrctl sweep seed=range(0,3)"], capture_output=True).returncode != 0


@pytest.mark.parametrize("command, shown", [
    ("sweep", "runs/<name>/"), ("tune", "runs/<name>/"), ("report", "reports/<name>.<ext>"),
    ("eval", "<data.name>-<split>[-<hash>]"), ("simulate", "<setupN>-<signature>or<figureN>-<signature>in<runsroot>/simulate/"),
])
def test_placeholders_in_help_survive_the_markdown_rendering(capsys, command, shown):
    # Typer's markdown mode reads a bare <name> as an HTML tag and drops it ("runs//").
    code, out = run(capsys, command, "--help")
    assert code == 0 and shown in "".join(out.out.replace("│", "").split()), out.out
