"""Render a TableResult as Markdown, CSV, LaTeX, JSON or a rich terminal table.

Markdown, LaTeX and rich share one grid of strings (the same cells and footnote numbers);
CSV and JSON carry the numbers themselves (mean, std, n, Δ, standard error, the Δ's
interval or seed-noise test and its verdict) for scripts.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from bbrctl.report.table import RowResult, TableResult

FORMATS = ("md", "csv", "latex", "json")
SUFFIX = {"md": ".md", "csv": ".csv", "latex": ".tex", "json": ".json"}
FROM_SUFFIX = {".md": "md", ".markdown": "md", ".csv": "csv", ".tex": "latex", ".latex": "latex", ".json": "json"}


@dataclass
class Grid:
    header: list[str]
    align: list[str]             # "l" | "r" per column
    body: list[list[str]]
    kinds: list[str]             # per body row: its state (for colouring) and source
    footnotes: list[tuple[int, str]]
    legend: list[str]
    notes: list[str]


def _num(x: float, precision: int, signed: bool = False) -> str:
    s = f"{x:+.{precision}f}" if signed else f"{x:.{precision}f}"
    if float(s) == 0:  # "-0.0" would read as a loss; a difference that rounds to zero is zero
        s = ("+" if signed else "") + f"{0:.{precision}f}"
    return s


def _stat_text(st, precision: int) -> str:
    if st is None or st.mean is None:
        return ""
    text = _num(st.mean, precision)
    if st.std is not None:
        text += f" ± {_num(st.std, precision)}"
    return text


def _is_base(r: RowResult, rows: list[RowResult]) -> bool:
    return any(o.baseline == r.id and o.source == r.source for o in rows)


def grid(tr: TableResult, precision: int = 1) -> Grid:
    d = tr.definition
    header = list(d.label_columns) + (["Source"] if tr.paper else []) + ["n"] + list(d.columns)
    align = ["l"] * len(d.label_columns) + (["l"] if tr.paper else []) + ["r"] * (1 + len(d.columns))
    if d.delta:
        header.append(f"Δ {d.delta}")
        align.append("r")
    labels_of = {r.id: " ".join(r.labels) for r in tr.rows}
    for other in d.compare:
        header.append(f"Δ {d.delta} vs {labels_of.get(other, other)}")
        align.append("r")
    numbers: dict[str, int] = {}

    def mark(texts: list[str]) -> str:
        out = []
        for t in texts:
            if t not in numbers:
                numbers[t] = len(numbers) + 1
            out.append(f"[{numbers[t]}]")
        return "".join(out)

    body, kinds = [], []
    for r in tr.rows:
        cells = list(r.labels) + ([r.source] if tr.paper else [])
        if r.state == "not run":
            n_text = "–"
        elif r.n_done == r.n_runs:
            n_text = str(r.n_done)
        else:
            n_text = f"{r.n_done}/{r.n_runs}"
        cells.append(n_text + mark(r.notes.get("n", [])))
        for c in d.columns:
            st = r.stats.get(c)
            if r.n_done == 0:
                text = r.state
            else:
                text = _stat_text(st, precision) or "n/a"
            cells.append(text + mark(r.notes.get(c, [])))
        if d.delta:
            if r.delta is not None:
                text = _delta_text(r, precision)
            elif _is_base(r, tr.rows) and r.n_done:
                text = "base"
            else:
                text = ""
            cells.append(text)
        for other in d.compare:
            got = r.compared.get(other)
            cells.append(_diff_text(got[0], got[2], precision) if got is not None
                         else ("ref" if r.id == other and r.n_done else ""))
        body.append(cells)
        kinds.append(f"{r.source}:{r.state}")

    legend = [_setting_line(tr),
              "Cells: mean ± sample std over the n finished seeds (no ± when n = 1); n reads finished/total "
              "while some seeds are unfinished."]
    if d.delta:
        base_labels = sorted({" ".join(r.labels) for r in tr.rows if _is_base(r, tr.rows)})
        legend.append(f"Δ {d.delta}: {d.delta} minus the baseline row's ({', '.join(base_labels) or 'none'}).")
        legend += _delta_legend(tr, precision)
    for other in d.compare:
        legend.append(f"Δ {d.delta} vs {labels_of.get(other, other)}: each row's {d.delta} minus that row's (ref), "
                      "with the same intervals (paired by seed where both rows ran the same seeds).")
    if tr.paper and tr.paper_caption:
        from bbrctl.report.paper import paper_tables

        setting = paper_tables()[d.paper].setting if d.paper else ""
        legend.append(f"paper: the published single runs ({tr.paper_caption.rstrip('.')}; {setting}). "
                      f"ours: the runs above in their own setting; compare trends between rows, not absolute values.")
    return Grid(header, align, body, kinds, [(n, t) for t, n in numbers.items()], legend, list(tr.notes))


# Markers after a Δ: the difference is told from seed noise (*), or is not (~, one seed).
SIGNIFICANT, WITHIN_NOISE = "*", "~"


def _delta_text(r: RowResult, precision: int) -> str:
    lk = r.decision["outcome"].last if r.decision else None
    if lk is not None:
        # The sequential rule's repeated interval at its last look; * = decided.
        text = (f"{_num(lk.mean, precision, signed=True)} [{_num(lk.low, precision, signed=True)}, "
                f"{_num(lk.high, precision, signed=True)}]")
        return text + (SIGNIFICANT if lk.decided else "")
    return _diff_text(r.delta[0], r.interval, precision)


def _diff_text(diff: float, iv, precision: int) -> str:
    text = _num(diff, precision, signed=True)
    if iv is None:
        return text
    if iv.test in ("paired", "welch"):
        text += f" [{_num(iv.low, precision, signed=True)}, {_num(iv.high, precision, signed=True)}]"
        return text + (SIGNIFICANT if iv.excludes_zero else "")
    return text + (WITHIN_NOISE if iv.within_noise else SIGNIFICANT)


def _labels(rows: list[RowResult]) -> str:
    return ", ".join(" ".join(r.labels) for r in rows)


def _delta_legend(tr: TableResult, precision: int) -> list[str]:
    """What the Δ column's intervals and markers mean, for the rows that have them."""
    d = tr.definition
    ours = [r for r in tr.rows if r.source == "ours" and r.delta is not None]
    paired = [r for r in ours if r.interval is not None and r.interval.test == "paired"]
    welch = [r for r in ours if r.interval is not None and r.interval.test == "welch"]
    noisy = [r for r in ours if r.interval is not None and r.interval.test == "noise"]
    single = [r for r in ours if r.interval is None]
    out = [decision_line(r, d.delta, precision) for r in ours if r.decision]
    paired = [r for r in paired if not (r.decision and r.decision["outcome"].last)]
    if paired or welch:
        how = []
        if paired:
            n = sorted({r.interval.n_pairs for r in paired})
            how.append(f"paired t over the {'/'.join(map(str, n))} seeds both rows ran ({_labels(paired)})")
        if welch:
            how.append(f"Welch's t, seeds not matched ({_labels(welch)})")
        out.append(f"[lo, hi]: 95% confidence interval of Δ {d.delta} across seeds: " + "; ".join(how)
                   + f"; {SIGNIFICANT} the interval excludes 0.")
    if noisy or single:
        nz = tr.noise
        if nz is not None:
            t = nz["sigma"]
            out.append(f"One seed ({_labels(noisy)}): the seed noise of this setting is σ = {_num(t, precision + 1)} "
                       f"{d.delta} (pooled std over seeds, {nz['df']} degrees of freedom; {nz['description']}; "
                       f"bbrctl/data/seed_study.yaml). {WITHIN_NOISE} |Δ| is below t·σ·√(1/n + 1/n_base) "
                       f"(= {_num(_one_one(nz), precision)} for two single runs), the 95% range of a difference "
                       f"between two seeds of one configuration: within noise; {SIGNIFICANT} beyond it.")
        else:
            out.append(f"One seed ({_labels(single)}): no seed study of this setting ships with bbrctl "
                       f"(bbrctl/data/seed_study.yaml), so these Δs cannot be told from seed noise; "
                       f"run seeds (e.g. seed=0,1,2) for intervals.")
    return out


def decision_line(r: RowResult, metric: str, precision: int) -> str:
    """How the sequential rule decided row r against its baseline (bbrctl.report.decision)."""
    out, rec = r.decision["outcome"], r.decision["record"]
    st = rec["settings"]
    pair = f"{' '.join(r.labels)} vs {' '.join(r.decision['base_labels'])}"
    lk = out.last
    level = f"{100 * (1 - st['alpha']):g}%"
    if lk is not None:
        iv = (f"Δ {metric} {_num(lk.mean, precision, signed=True)}, {level} repeated interval "
              f"[{_num(lk.low, precision, signed=True)}, {_num(lk.high, precision, signed=True)}] "
              f"(|t| = {abs(lk.t):.2f}, boundary {lk.t_crit:.2f})")
    else:
        iv = f"no look yet (the first is at {st['min_seeds']} seeds)"
    if out.state == "decided":
        better = " ".join(r.labels) if lk.mean > 0 else " ".join(r.decision["base_labels"])
        head = f"decided at {lk.n} seeds: {better} is better; {iv}"
    elif out.state == "undecided":
        head = (f"undecided after {rec['seeds']} seeds (the cap, sweep.max_seeds): not told from seed noise; "
                f"{iv}")
    else:
        head = f"running, {rec['seeds']} seeds started, not decided yet; {iv}"
    missing = (f" Seeds {', '.join(map(str, rec['missing']))} failed twice and count as missing in both rows."
               if rec.get("missing") else "")
    return (f"Seeds until decided ({pair}, sweep {r.decision['sweep']}): {head}. Rule: {out.design.describe()} "
            f"(docs/sequential.md); {SIGNIFICANT} decided.{missing}")


def _one_one(nz: dict) -> float:
    from bbrctl.report.stats import noise_threshold

    return noise_threshold(nz["sigma"], nz["df"], 1, 1)


def _setting_line(tr: TableResult) -> str:
    parts = [f"{k}={v}" for k, v in tr.setting.items()]
    src = f"runs: {tr.root}" + (f" (sweep {tr.sweep})" if tr.sweep else "")
    if tr.where:
        src += " where " + ", ".join(f"{k}={v}" for k, v in tr.where.items())
    return "Setting: " + (", ".join(parts) if parts else "no finished runs yet") + f"; {src}."


def to_markdown(tr: TableResult, precision: int = 1) -> str:
    g = grid(tr, precision)

    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    lines = [f"## {tr.title}", ""]
    lines.append("| " + " | ".join(esc(h) for h in g.header) + " |")
    lines.append("|" + "|".join(":---" if a == "l" else "---:" for a in g.align) + "|")
    for row in g.body:
        lines.append("| " + " | ".join(esc(c) for c in row) + " |")
    lines.append("")
    lines += [f"{line}  " for line in g.legend]
    if g.footnotes or g.notes:
        lines.append("")
        lines += [f"[{n}] {esc(t)}  " for n, t in g.footnotes]
        lines += [f"Note: {esc(t)}  " for t in g.notes]
    return "\n".join(lines).rstrip() + "\n"


def _tex(s: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
            "±": r"$\pm$", "Δ": r"$\Delta$", "–": "--", "γ": r"$\gamma$", "β": r"$\beta$", "≥": r"$\geq$",
            "₁": r"$_1$", "₂": r"$_2$", "²": r"$^2$", "σ": r"$\sigma$", "√": r"$\surd$", "·": r"$\cdot$"}
    return "".join(repl.get(ch, ch) for ch in s)


def to_latex(tr: TableResult, precision: int = 1) -> str:
    import re

    g = grid(tr, precision)

    def cell(s: str) -> str:
        # Footnote markers "[3]" become superscripts.
        return re.sub(r"\\\[(\d+)\]|\[(\d+)\]", lambda m: f"$^{{{m.group(1) or m.group(2)}}}$", _tex(s))

    lines = [r"% generated by `bbrctl report`; needs \usepackage{booktabs}",
             r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(tr.title)}}}",
             rf"\begin{{tabular}}{{{''.join(g.align)}}}", r"\toprule",
             " & ".join(cell(h) for h in g.header) + r" \\", r"\midrule"]
    for row in g.body:
        lines.append(" & ".join(cell(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip\footnotesize"]
    lines += [_tex(t) + r"\\" for t in g.legend]
    lines += [f"$^{{{n}}}$ " + _tex(t) + r"\\" for n, t in g.footnotes]
    lines += [_tex("Note: " + t) + r"\\" for t in g.notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(tr: TableResult, precision: int | None = None) -> str:
    """One line per row; numbers unrounded; empty where there is none."""
    d = tr.definition
    header = list(d.label_columns) + ["source", "state", "n", "n_runs"]
    for c in d.columns:
        header += [c, f"{c}_std"]
    if d.delta:
        k = f"delta_{d.delta}"
        header += [k, f"{k}_se", f"{k}_test", f"{k}_ci_low", f"{k}_ci_high", f"{k}_df", f"{k}_excludes_zero",
                   f"{k}_noise_threshold", f"{k}_within_noise"]
        # A row decided by the sequential rule (sweep.seeds=auto) carries the rule's own reading
        # too: its state, the seeds at its last look and the repeated interval the Δ cell shows.
        if any(r.decision for r in tr.rows):
            header += [f"{k}_sequential_state", f"{k}_sequential_seeds", f"{k}_rci_low", f"{k}_rci_high"]
    for other in d.compare:
        k = f"delta_{d.delta}_vs_{other}"
        header += [k, f"{k}_ci_low", f"{k}_ci_high", f"{k}_test"]
    header.append("notes")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in tr.rows:
        line: list[Any] = list(r.labels) + [r.source, r.state, r.n_done, r.n_runs]
        for c in d.columns:
            st = r.stats.get(c)
            line += [_raw(st.mean if st else None), _raw(st.std if st else None)]
        if d.delta:
            line += [_raw(r.delta[0] if r.delta else None), _raw(r.delta[1] if r.delta else None)]
            iv = r.interval
            line += ([iv.test, _raw(iv.low), _raw(iv.high), _raw(iv.df), _flag(iv.excludes_zero),
                      _raw(iv.threshold), _flag(iv.within_noise)] if iv is not None else [""] * 7)
            if any(x.decision for x in tr.rows):
                lk = r.decision["outcome"].last if r.decision else None
                line += ([r.decision["outcome"].state, lk.n if lk else "", _raw(lk.low if lk else None),
                          _raw(lk.high if lk else None)] if r.decision else [""] * 4)
        for other in d.compare:
            got = r.compared.get(other)
            iv = got[2] if got is not None else None
            line += [_raw(got[0] if got else None)] + ([_raw(iv.low), _raw(iv.high), iv.test] if iv is not None
                                                       else [""] * 3)
        line.append(" | ".join(t for texts in r.notes.values() for t in texts))
        w.writerow(line)
    return buf.getvalue()


def _raw(x: float | None) -> str:
    return "" if x is None else repr(round(x, 10))


def _flag(x: bool | None) -> str:
    return "" if x is None else ("true" if x else "false")


def to_dict(tr: TableResult) -> dict:
    d = tr.definition
    rows = []
    for r in tr.rows:
        rows.append({
            "id": r.id, "labels": dict(zip(d.label_columns, r.labels)), "source": r.source, "state": r.state,
            "n": r.n_done, "n_runs": r.n_runs, "states": dict(sorted(r.states.items())),
            "metrics": {c: ({"mean": st.mean, "std": st.std, "n": st.n, "values": st.values} if st else None)
                        for c, st in ((c, r.stats.get(c)) for c in d.columns)},
            "baseline": r.baseline,
            "delta": ({"metric": d.delta, "value": r.delta[0], "se": r.delta[1],
                       **({"interval": r.interval.as_dict()} if r.interval is not None else {"interval": None}),
                       **({"sequential": {**r.decision["outcome"].as_dict(), "sweep": r.decision["sweep"],
                                          "seeds": r.decision["record"]["seeds"],
                                          "missing": r.decision["record"].get("missing", [])}}
                          if r.decision else {})}
                      if r.delta else None),
            "compared": {o: {"metric": d.delta, "value": v, "se": se,
                             "interval": iv.as_dict() if iv is not None else None}
                         for o, (v, se, iv) in r.compared.items()},
            "seeds": r.seeds, "runs": r.runs, "environments": r.envs,
            "notes": [t for texts in r.notes.values() for t in texts],
        })
    return {
        "kind": "table", "name": d.name, "title": d.title, "definition": d.source,
        "label_columns": list(d.label_columns), "metric": d.metric, "columns": list(d.columns),
        "delta": d.delta, "compare": list(d.compare), "runs_root": tr.root, "sweep": tr.sweep, "where": tr.where,
        "setting": tr.setting, "paper": tr.paper, "paper_caption": tr.paper_caption,
        "rows": rows, "notes": tr.notes, "generated": tr.generated, "seed_noise": tr.noise,
        "legend": grid(tr).legend,
    }


def to_json(tr: TableResult, precision: int | None = None) -> str:
    return json.dumps(to_dict(tr), indent=2, default=str) + "\n"


RENDERERS = {"md": to_markdown, "csv": to_csv, "latex": to_latex, "json": to_json}


def render(tr: TableResult, fmt: str, precision: int = 1) -> str:
    return RENDERERS[fmt](tr, precision)


_STYLE = {"done": "", "partial": "yellow", "running": "cyan", "requeued": "cyan", "pending": "dim",
          "incomplete": "magenta", "failed": "red", "missing": "dim", "not run": "dim"}


def print_rich(tr: TableResult, precision: int = 1, console=None) -> None:
    """The grid as a rich table on the terminal, with the legend and footnotes below."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    g = grid(tr, precision)
    console = console or Console()
    # Text, not markup: a title or label like "[/bold]" from a user's definition is printed as written.
    t = Table(title=Text(str(tr.title or "")), title_justify="left", header_style="bold")
    for h, a in zip(g.header, g.align):
        t.add_column(Text(str(h)), justify="left" if a == "l" else "right", no_wrap=True)
    for row, kind in zip(g.body, g.kinds):
        source, state = kind.split(":", 1)
        style = "italic dim" if source == "paper" else _STYLE.get(state, "")
        t.add_row(*[Text(c) for c in row], style=style or None)
    console.print(t)
    for line in g.legend:
        console.print(Text(line, style="dim"))
    for n, text in g.footnotes:
        console.print(Text(f"[{n}] {text}"))
    for text in g.notes:
        console.print(Text(f"Note: {text}", style="yellow"))
