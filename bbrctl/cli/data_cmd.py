"""`bbrctl data synth|check`: make the synthetic dataset, or validate a COCO-format one."""

from __future__ import annotations

import json
import time
from typing import List, Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import ConfigDirOpt, OverridesArg, as_list
from bbrctl.errors import UserError

data_app = typer.Typer(
    name="data",
    help="Generate the synthetic dataset (synth) or validate a COCO-format dataset (check).",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")

_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _data_cfg(overrides, config_dir):
    from bbrctl import config as C

    cfg = C.compose(as_list(overrides), as_list(config_dir))
    return C.to_container(cfg)["data"]


@data_app.command("synth", context_settings=_EXTRA)
def synth_command(
    overrides: Optional[List[str]] = OverridesArg,
    config_dir: Optional[List[str]] = ConfigDirOpt,
    force: bool = typer.Option(False, "--force", help="Regenerate even if a complete copy is cached."),
) -> None:
    """Generate the synthetic dataset the config points at (data=shapes by default).

    Deterministic from data.synth_seed and cached under data.root, one directory per
    parameter set; a complete copy is reused. Example: bbrctl data synth data=shapes_tiny
    """
    from bbrctl.config.schema import SYNTHETIC_DATA
    from bbrctl.detection.data import datasets as D
    from bbrctl.detection.data import synth

    data_cfg = _data_cfg(overrides, config_dir)
    if not D.is_synthetic(data_cfg):
        raise UserError(f"data={data_cfg.get('name')} is not synthetic; `bbrctl data synth` generates "
                        f"data={' or data='.join(SYNTHETIC_DATA)} (use `bbrctl data check` for COCO-format data)")
    spec = synth.ShapesSpec.from_cfg(data_cfg)
    where = D.synthetic_dir(data_cfg)
    t0 = time.perf_counter()
    manifest, generated = synth.ensure_shapes(spec, where, force=force)
    took = time.perf_counter() - t0
    counts = ", ".join(f"{s} {c['images']} images / {c['annotations']} objects" for s, c in manifest["splits"].items())
    verb = f"generated in {took:.1f} s" if generated else "already complete"
    typer.echo(f"{where}: {verb} ({counts})")


@data_app.command("check", context_settings=_EXTRA)
def check_command(
    overrides: Optional[List[str]] = OverridesArg,
    config_dir: Optional[List[str]] = ConfigDirOpt,
    no_images: bool = typer.Option(False, "--no-images", help="Parse the annotations only; do not open every image."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Validate the configured dataset (annotations and images) and print its counts.

    Exits 2 naming the file and record at the first real problem; boxes of non-positive
    size are dropped and counted, as the COCO protocol does.
    Example: bbrctl data check data=coco data.root=/datasets/coco
    """
    from bbrctl.detection.data import datasets as D

    data_cfg = _data_cfg(overrides, config_dir)
    report = D.check_dataset(data_cfg, read_images=not no_images)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    for split, r in report.items():
        area = r["area"]
        typer.echo(
            f"{split}: {r['images']} images ({r['images_read']} opened), {r['categories']} categories, "
            f"{r['objects']} objects (small {area['small']}, medium {area['medium']}, large {area['large']}), "
            f"{r['crowd']} crowd, {r['dropped_degenerate']} dropped (non-positive size), "
            f"{r['images_without_objects']} images without objects"
        )
    typer.echo("ok")
