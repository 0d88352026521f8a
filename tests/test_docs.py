"""The README is a front page and the docs' examples work as written.

Every code block of README.md and docs/*.md is read as a user would paste it:

- a shell block must parse in bash (``bash -n``): an unquoted ``seed=range(0,3)`` is a syntax
  error there, whatever bbrctl would have done with it;
- each ``bbrctl`` command in it is run in-process: ``sweep`` with ``--dry-run`` added (composed,
  schema-checked and preflighted, nothing created), ``train`` as ``config`` (the same composition
  and validation without training), ``config`` as it is; a transcript line (``$ bbrctl ...``
  followed by ``bbrctl: error: ...``) must exit 2 with that error;
- a Python block must compile.

A block that cannot run here (it needs COCO, a GPU, a cluster, or runs made before it) is marked
by an HTML comment on the line before it, ``<!-- docs-test: needs coco -->`` (or gpu, cluster,
runs), or ``<!-- docs-test: run by tests/test_x.py -->`` where another test runs it with the files it
needs: it is still parsed, not run here (``<!-- docs-test: page run by tests/test_x.py -->`` marks
every block of a page). Commands with a placeholder (``...``, ``<run>``) are parsed only.
The other commands (status, report, simulate, tune, eval, data) are parsed and their subcommand and
options checked by ``--help``-free parsing: they need runs that a docs test does not make.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
MARK = re.compile(r"<!--\s*docs-test:\s*(?:needs\s+(coco|gpu|cluster|runs)|run by (tests/test_\w+\.py))\s*-->")
SHELL_START = ("bbrctl ", "$ ", ".venv/bin/", "python ", "python3 ", "pip ", "torchrun ", "sbatch ", "export ",
               "cd ", "git ", "mkdocs ", "srun ", "BBRCTL_", "WANDB_", "OMP_", "CUDA_", "squeue ", "wandb ")
PAGE_MARK = re.compile(r"<!--\s*docs-test:\s*page run by (tests/test_\w+\.py)\s*-->")
MAX_README_LINES = 120


class Block:
    def __init__(self, page: Path, line: int, lang: str, text: str, needs: str | None):
        self.page, self.line, self.lang, self.text, self.needs = page, line, lang, text, needs

    def __repr__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        if self.lang in ("bash", "sh", "shell", "console"):
            return "shell"
        if self.lang in ("python", "py"):
            return "python"
        if self.lang:
            return "other"
        first = next((ln.strip() for ln in self.text.splitlines() if ln.strip()), "")
        if first.startswith(("from ", "import ")):
            return "python"
        return "shell" if first.startswith(SHELL_START) else "other"


def blocks(page: Path) -> list[Block]:
    """The fenced and indented code blocks of a Markdown page, with the marker before each."""
    out: list[Block] = []
    text = page.read_text()
    whole = PAGE_MARK.search(text)
    if whole:                           # every block of the page is run by that test
        return [Block(b.page, b.line, b.lang, b.text, whole.group(1)) for b in _blocks(page, text)]
    return _blocks(page, text)


def _blocks(page: Path, text: str) -> list[Block]:
    out: list[Block] = []
    lines = text.splitlines()
    i, prev_text = 0, ""
    in_list = False
    while i < len(lines):
        ln = lines[i]
        fence = re.match(r"^(\s*)(```+|~~~+)\s*([\w-]*)", ln)
        if fence:
            indent, mark, lang = fence.groups()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith(mark):
                j += 1
            body = "\n".join(x[len(indent):] if x.startswith(indent) else x for x in lines[i + 1:j])
            out.append(Block(page, i + 1, lang.lower(), body, _needs(prev_text)))
            prev_text, i = "", j + 1
            continue
        # An indented block starts after a blank line, outside a list item's continuation.
        if ln.startswith("    ") and (i == 0 or not lines[i - 1].strip()) and not in_list:
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            body = "\n".join(x[4:] for x in lines[i:j]).rstrip()
            out.append(Block(page, i + 1, "", body, _needs(prev_text)))
            prev_text, i = "", j
            continue
        if ln.strip():
            in_list = bool(re.match(r"^\s*([-*+]|\d+\.)\s", ln)) or (in_list and ln.startswith(" "))
            prev_text = ln
        i += 1
    return out


def _needs(prev: str) -> str | None:
    m = MARK.search(prev)
    return (m.group(1) or m.group(2)) if m else None


ALL = [b for p in PAGES for b in blocks(p)]
SHELL = [b for b in ALL if b.kind == "shell"]
PYTHON = [b for b in ALL if b.kind == "python"]


def script_of(block: Block) -> tuple[str, list[tuple[str, list[str]]]]:
    """The block as a script (transcript output dropped) and its (command, expected output) pairs."""
    script, transcript = [], []
    lines = block.text.splitlines()
    is_transcript = any(ln.startswith("$ ") for ln in lines)
    for ln in lines:
        if is_transcript:
            if ln.startswith("$ "):
                script.append(ln[2:])
                transcript.append((ln[2:], []))
            elif transcript:
                transcript[-1][1].append(ln)
        else:
            script.append(ln)
    return "\n".join(script), transcript


def commands(script: str) -> list[list[str]]:
    """Each simple command of a script, as its words (continuations joined, comments dropped)."""
    text = script.replace("\\\n", " ")
    out: list[list[str]] = []
    for ln in text.splitlines():
        lex = shlex.shlex(ln, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        words: list[str] = []
        for tok in lex:
            if tok in ("&&", "||", ";", "|", "&"):
                if words:
                    out.append(words)
                words = []
            else:
                words.append(tok)
        if words:
            out.append(words)
    return out


def bbrctl_argv(words: list[str]) -> list[str] | None:
    """The arguments after ``bbrctl`` (any path to it), else None."""
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):     # VAR=value cmd
        words = words[1:]
    if not words:
        return None
    if Path(words[0]).name == "bbrctl":
        return words[1:]
    if words[:3] in (["python", "-m", "bbrctl"], ["python3", "-m", "bbrctl"]):
        return words[3:]
    return None


# --------------------------------------------------------------------------- the front page

def test_the_readme_is_a_front_page_with_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= MAX_README_LINES, "README.md is the front page; move detail into docs/"
    first = [b for b in blocks(ROOT / "README.md") if b.kind == "shell"][:2]
    assert "+experiment=table1_decide" in first[0].text and "pip install -e ." in first[0].text
    assert "pip install -e '.[test]'" in first[1].text and "pytest" in first[1].text
    # what .ci/run runs is that test command
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest\n" in ci


def test_every_link_of_the_readme_and_the_docs_names_a_file_that_exists():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"^[a-z]+://", target):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_every_docs_page_is_in_the_site_navigation():
    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def files(nav) -> list[str]:
        out = []
        for item in nav:
            for v in (item.values() if isinstance(item, dict) else [item]):
                out += files(v) if isinstance(v, list) else [v]
        return out

    listed = files(cfg["nav"])
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md")), "mkdocs.yml nav and docs/*.md differ"


# --------------------------------------------------------------------------- the examples

def test_the_pages_hold_examples_to_check():
    assert len(SHELL) >= 25 and len(PYTHON) >= 2, (len(SHELL), len(PYTHON))
    assert len(RUNNABLE) >= 15, len(RUNNABLE)


def test_a_block_said_to_be_run_elsewhere_names_a_test_that_runs_its_page():
    for b in ALL:
        if b.needs and b.needs.startswith("tests/"):
            test = ROOT / b.needs
            assert test.is_file(), f"{b!r} names {b.needs}, which does not exist"
            assert b.page.name in test.read_text(), f"{b!r}: {b.needs} does not read {b.page.name}"


@pytest.mark.parametrize("block", SHELL, ids=repr)
def test_a_shell_example_parses_in_bash(block):
    script, _ = script_of(block)
    r = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert r.returncode == 0, f"{block!r} is not valid bash as written: {r.stderr.strip()}"


@pytest.mark.parametrize("block", PYTHON, ids=repr)
def test_a_python_example_compiles(block):
    compile(block.text, repr(block), "exec")


RUNNABLE = [b for b in SHELL if b.needs is None]


def _placeholder(argv: list[str]) -> bool:
    return any("..." in a or re.search(r"<[a-z_ -]+>", a) for a in argv)


@pytest.mark.parametrize("block", RUNNABLE, ids=repr)
def test_the_bbrctl_commands_of_an_example_run_as_written(block, tmp_path, monkeypatch, capsys):
    from bbrctl.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BBRCTL_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("WANDB_MODE", "disabled")
    script, transcript = script_of(block)
    expected = {cmd: out for cmd, out in transcript}
    ran = 0
    for words in commands(script):
        argv = bbrctl_argv(words)
        if not argv or _placeholder(argv) or argv[0] not in ("sweep", "train", "config"):
            continue
        if argv[0] == "train":
            argv = ["config", *[a for a in argv[1:] if not a.startswith("--run-dir")]]
        if argv[0] == "sweep" and "--cancel" in argv:
            continue
        if argv[0] == "sweep" and "--dry-run" not in argv:
            argv = [a for a in argv if a != "--wait"] + ["--dry-run"]
        with pytest.raises(SystemExit) as done:
            main(argv)
            raise SystemExit(0)
        out = capsys.readouterr()
        code = done.value.code or 0
        want = next((o for c, o in expected.items() if shlex.split(c)[1:] == [a for a in argv if a != "--dry-run"]
                     or shlex.split(c)[1:] == argv), None)
        if want and want[0].startswith("bbrctl: error:"):
            assert code == 2, f"{block!r}: `bbrctl {shlex.join(argv)}` was shown failing but exited {code}"
            shown = want[0].split("...")[0].rstrip(", ")
            assert out.err.strip().startswith(shown), f"{block!r}: the page shows {want[0]!r}, bbrctl says {out.err!r}"
        else:
            assert code == 0, f"{block!r}: `bbrctl {shlex.join(argv)}` exited {code}: {out.err.strip()[-400:]}"
        ran += 1
    assert not list(tmp_path.joinpath("runs").rglob("job.json")), f"{block!r}: a docs check created a run"
