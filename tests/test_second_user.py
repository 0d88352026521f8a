"""A lab-mate (another Unix user) reads a shared runs root: status and report see the finished
runs when the umask shares them, and say they cannot read what the umask keeps private,
never "missing". The second user is a forked child that drops to uid/gid 65534 (nobody)
after the modules it needs are imported (needs root, as in CI)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from bbrctl.report.fake_runs import make_config, make_run

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
OTHER = 65534


def _others_can_enter(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def as_other_user(fn):
    """Run ``fn()`` in a child process as uid/gid 65534; return what it returned (JSON)."""
    import bbrctl

    pkg = Path(bbrctl.__file__).resolve().parent
    if not _others_can_enter(pkg):
        # The child still imports bbrctl modules lazily: a checkout in a 0700 folder (mktemp -d)
        # is closed to the other user before any runs root is read.
        pytest.skip(f"{pkg} is not reachable by another user (a folder above it lacks o+x)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the lab-mate
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(OTHER)
            os.setuid(OTHER)
            out = json.dumps({"ok": fn()}, default=str)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out, code = json.dumps({"error": f"{type(e).__name__}: {e}"}), 1
        with os.fdopen(w, "w") as f:
            f.write(out)
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        data = json.loads(f.read() or '{"error": "no answer"}')
    os.waitpid(pid, 0)
    assert "error" not in data, data["error"]
    return data["ok"]


def shared_root(umask: int) -> Path:
    base = Path(tempfile.mkdtemp(prefix="bbrctl-shared-"))
    os.chmod(base, 0o755)  # a lab's shared folder: everyone may enter
    old = os.umask(umask)
    try:
        for loss, ap in (("baseline", 30.0), ("focal_eiou", 32.0)):
            make_run(base, make_config(loss, seed=0), ap=ap)
    finally:
        os.umask(old)
    return base


def look(root: Path) -> dict:
    from bbrctl.report import report_table
    from bbrctl.status import sweep_jobs

    from bbrctl.store import DamagedFile

    try:
        jobs = sweep_jobs(root / "table1")
    except DamagedFile as e:  # the status command prints this line, exit 2
        return {"status_error": str(e)}
    table = json.loads(report_table("1", runs=root, out="-", fmt="json").text)
    rows = {r["labels"]["Method"]: r for r in table["rows"] if r["source"] == "ours"
            and r["labels"]["Method"] in ("Baseline", "Focal-EIOU")}
    ap = {k: (v["metrics"]["AP"] or {}).get("mean") for k, v in rows.items()}
    return {"states": sorted(j.state for j in jobs), "notes": [j.note for j in jobs] + table["notes"],
            "rows": {k: [v["state"], ap[k], v["notes"]] for k, v in rows.items()}}


def test_a_group_readable_root_shows_the_lab_mate_every_finished_run():
    root = shared_root(0o022)
    mine = look(root)  # also imports everything the child needs
    theirs = as_other_user(lambda: look(root))
    assert theirs == mine
    assert theirs["states"] == ["done", "done"]
    assert theirs["rows"]["Baseline"][:2] == ["done", 30.0] and theirs["rows"]["Focal-EIOU"][:2] == ["done", 32.0]


def report_rows(root: Path) -> dict:
    from bbrctl.report import report_table

    table = json.loads(report_table("1", runs=root, out="-", fmt="json").text)
    return {"notes": table["notes"], "rows": {r["labels"]["Method"]: [r["state"], r["notes"]] for r in table["rows"]
                                              if r["source"] == "ours"}}


def test_a_private_root_says_it_cannot_be_read_not_missing():
    root = shared_root(0o077)
    look(root), report_rows(root)
    status = as_other_user(lambda: look(root))
    assert status["status_error"] == f"{root / 'table1' / 'sweep.json'}: cannot be read (Permission denied)"
    report = as_other_user(lambda: report_rows(root))
    for method in ("Baseline", "Focal-EIOU"):
        state, notes = report["rows"][method]
        assert state == "unreadable" and any("Permission denied" in n for n in notes), report
    assert any("cannot be read (Permission denied)" in n and "umask" in n for n in report["notes"])


def test_a_shared_root_with_one_private_results_file_says_which(tmp_path):
    root = shared_root(0o022)
    private = next((root / "table1").glob("focal_eiou-*")) / "results.json"
    private.chmod(0o600)
    report_rows(root)
    report = as_other_user(lambda: report_rows(root))
    assert report["rows"]["Baseline"][0] == "done"
    state, notes = report["rows"]["Focal-EIOU"]
    assert state == "unreadable" and any("results.json cannot be read (Permission denied)" in n for n in notes)
