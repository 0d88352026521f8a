"""`bbrctl report`: the paper's tables and figures from finished runs.

Pipeline (each step its own module; none imports torch, matplotlib or wandb at import time):

    definitions  report/*.yaml → TableDef / FigureDef / SimulationDef (which runs make which row)
    collect      runs/**/job.json (+ results.json / status.json) → Run records, never failing on partial files
    matching     rows ↔ runs, seeds grouped by signature-minus-seed, one common setting per table
    table        rows × metrics: mean ± std over seeds, Δ against the baseline row, footnotes
    ablation_plots  Figure 9 (AP against a swept loss parameter): points and PNG
    simulation   Figures 7/8 from `bbrctl simulate` output (drawn by bbrctl.simulate.figures)
    detections   --figure detections: the same val images under several runs
    fake_runs    run directories in the real format, for the tests and benchmarks
    render       Markdown / CSV / LaTeX / JSON / rich
    paper        the published numbers of Tables 1-3 (bbrctl/data/paper_results.yaml)
    wandb_table  --wandb: a wandb.Table (+ images) in the sweep's group
    main         the command flows used by bbrctl.cli.report_cmd

Public API: ``report_table``, ``report_figure`` (bbrctl.report.main), ``build_table``
(bbrctl.report.table), ``collect`` (bbrctl.report.collect), ``load`` (bbrctl.report.definitions).
"""

from __future__ import annotations

__all__ = ["report_table", "report_figure"]


def __getattr__(name: str):
    if name in __all__:
        from bbrctl.report import main

        return getattr(main, name)
    raise AttributeError(name)
