from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import ConfigDirOpt, OverridesArg, as_list


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_command(
    overrides: Optional[List[str]] = OverridesArg,
    run_dir: Path = typer.Option(..., "--run-dir", metavar="DIR", help="The run to evaluate (finished or interrupted)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", metavar="PATH",
                                              help="Weights to evaluate (default: DIR/checkpoints/last.pt)."),
    split: str = typer.Option("val", "--split", help="val | train: which split of the data to evaluate on."),
    name: Optional[str] = typer.Option(None, "--name", help="Write DIR/evals/NAME.json (default: \\<data.name>-\\<split>[-\\<hash>])."),
    config_dir: Optional[List[str]] = ConfigDirOpt,
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available) | cpu | cuda."),
    as_json: bool = typer.Option(False, "--json", help="Print the written record as JSON."),
) -> None:
    """Evaluate a run's checkpoint again, on its own val split or other data (COCO AP).

    Overrides change the data (`data=coco data.root=/datasets/coco`, `data.val_ann=...`) and how
    detections are read (model.score_thresh, model.nms_thresh, model.detections_per_img,
    schedule.eval_batch_size); the model is the run's. Writes DIR/evals/NAME.json and touches
    nothing else of the run. Several processes: `torchrun --nproc-per-node N -m bbrctl eval ...`
    (each evaluates its shard; rank 0 scores and writes).
    """
    from bbrctl.evaluation import evaluate_run

    path, record = evaluate_run(run_dir, checkpoint=checkpoint, overrides=as_list(overrides),
                                config_dirs=as_list(config_dir), split=split, name=name, device=device)
    if record is None:       # a torchrun rank other than 0
        return
    if as_json:
        typer.echo(json.dumps({**record, "path": str(path)}, indent=2, default=str))
        return
    it = record.get("checkpoint_iteration")
    typer.echo(f"{path}: {record['images']} {record['split']} images of {record['data']['name']}, checkpoint "
               f"{Path(record['checkpoint']).name}{f' (iteration {it})' if it is not None else ''}, "
               f"world size {record['world_size']}")
    from bbrctl.store import AP_KEYS

    for iou_type, m in record["metrics"].items():
        keys = [k for k in AP_KEYS if k in m] + [k for k in m if k not in AP_KEYS]
        typer.echo(f"  {iou_type}: " + "  ".join(f"{k} {'-' if m[k] is None else f'{m[k]:.1f}'}" for k in keys))
