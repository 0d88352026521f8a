"""Hardening, `simulate --out DIR --force`: only a directory holding bbrctl's own marker (a
regular file with its text) is replaced; a summary.json or figure.json proves nothing.
"""

from __future__ import annotations

import json

import pytest

from bbrctl.cli import main
from bbrctl.simulate.output import MARKER, MARKER_TEXT

ARGV = ["simulate", "--setup", "2", "--points", "2", "--iterations", "3", "--no-plots", "-q"]


def cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _theirs(d, files):
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return {p.name: p.read_text() for p in d.iterdir()}


@pytest.mark.parametrize("files", [
    {"summary.json": '{"setup": 2}', "thesis.tex": "years of work"},          # the probe
    {"figure.json": "{}", "data.csv": "1,2"},
    {"summary.json": "{}", "figure.json": "{}"},
    {MARKER: "not bbrctl's text", "notes.txt": "mine"},                         # a marker with other content
])
def test_force_never_deletes_a_directory_without_the_marker(files, tmp_path, capsys):
    out = tmp_path / "theirs"
    before = _theirs(out, files)
    code, _, err = cli([*ARGV, "--out", str(out), "--force"], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a bbrctl simulation" in err, err
    assert {p.name: p.read_text() for p in out.iterdir()} == before


def test_a_linked_marker_does_not_count(tmp_path, capsys):
    real = tmp_path / "real-marker"
    real.write_text(MARKER_TEXT)
    out = tmp_path / "theirs"
    before = _theirs(out, {"summary.json": "{}", "keep.txt": "x"})
    (out / MARKER).symlink_to(real)
    code, _, err = cli([*ARGV, "--out", str(out), "--force"], capsys)
    assert code == 2 and (out / "keep.txt").read_text() == "x" and "summary.json" in before


def test_control_force_replaces_bbrctls_own_output(tmp_path, capsys):
    out = tmp_path / "sim"
    assert cli([*ARGV, "--out", str(out)], capsys)[0] == 0
    assert (out / MARKER).read_text() == MARKER_TEXT
    (out / "summary.json").write_text("{}")
    code, _, err = cli([*ARGV, "--out", str(out), "--force"], capsys)
    assert code == 0, err
    assert json.loads((out / "summary.json").read_text())["setup"] == 2


def test_a_default_directory_with_a_planted_summary_is_not_reused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(ARGV, capsys)[0] == 0
    (run,) = (tmp_path / "runs" / "simulate").iterdir()
    (run / MARKER).unlink()
    (run / "summary.json").write_text(json.dumps({"setup": 2, "losses": {}}))
    code, _, err = cli(ARGV, capsys)
    assert code == 2 and "--force" in err and err.count("\n") == 1
