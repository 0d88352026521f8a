"""`pip install .` must ship the config tree and templates, not only an editable checkout."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(REPO)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("bbrctl-*.whl")
    return whl


def test_wheel_ships_every_subpackage_and_the_config_tree(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in (REPO / "bbrctl").rglob("__init__.py"):
        rel = init.relative_to(REPO).as_posix()
        assert rel in names, f"{rel} missing from the wheel"
    for yaml_file in (REPO / "conf").rglob("*.yaml"):
        rel = "bbrctl/conf/" + yaml_file.relative_to(REPO / "conf").as_posix()
        assert rel in names, f"{rel} missing from the wheel"
    for tmpl in (REPO / "slurm").glob("*.j2"):
        assert f"bbrctl/slurm/{tmpl.name}" in names


def test_installed_wheel_composes_from_anywhere(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import bbrctl.config as C; d = C.package_config_dir(); print(d);"
            "cfg = C.compose(['loss=focal_eiou', 'gamma=0.25']); print(cfg.loss.params.gamma)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    conf_dir, gamma = r.stdout.split()
    assert Path(conf_dir).is_relative_to(target)
    assert float(gamma) == 0.25


def test_no_source_file_is_git_ignored():
    # A too-broad .gitignore pattern once hid conf/data/ from every clone.
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    r = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "conf", "slurm", "bbrctl"],
                       cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"git unavailable: {r.stderr.strip()}")
    ignored = [p for p in r.stdout.splitlines() if "__pycache__" not in p and not p.endswith(".pyc")]
    assert ignored == []


def test_every_third_party_import_is_a_declared_dependency():
    """PyYAML was imported directly but only arrived through omegaconf: declare what we import."""
    import ast
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # An optional extra's package (optuna for `bbrctl[tune]`) is declared too: imported where it is used only.
    extras = [d for name, deps in project.get("optional-dependencies", {}).items() if name != "test" for d in deps]
    declared = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in [*project["dependencies"], *extras]}
    dist_of = {"yaml": "pyyaml", "PIL": "pillow", "faster_coco_eval": "faster-coco-eval", "hydra": "hydra-core"}
    stdlib = set(sys.stdlib_module_names)
    used = set()
    for p in (REPO / "bbrctl").rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for n in names:
                top = n.split(".")[0]
                if top not in stdlib and top != "bbrctl":
                    used.add(dist_of.get(top, top).lower())
    assert used - declared == set(), f"imported but not declared in pyproject.toml: {sorted(used - declared)}"
