"""Weights & Biases logging for one training run (rank 0 only).

What lands where (one W&B run per run directory):

* **identity**: project ``wandb.project``; group ``wandb.group``, else the sweep's name,
  else (a single ``bbrctl train``) the run directory's name; job_type ``train``; name =
  the run directory's name; tags = the swept values (``loss=giou``, from job.json's
  overrides and the sweep's ``swept_keys``) plus ``wandb.tags``.
* **config**: the resolved config with secret-looking values redacted
  (bbrctl.redact), ``launcher`` cut down to its name (setup lines, partitions and the
  like are not results), plus ``bbrctl.{signature, sweep, run_dir, overrides}``. The
  process's command-line arguments, which W&B records, are redacted too; the environment
  is never logged.
* **history** (x axis: the training iteration): ``train/<term>`` for every loss term,
  ``train/loss``, ``train/lr``, ``train/time`` (s per iteration), ``train/data_time``;
  ``eval/<bbox|segm>/<AP..APl>`` at each evaluation; at the end ``val/detections`` (a
  ``wandb.Image``: a grid of ``wandb.images`` val images with ground truth and
  detections, drawn by bbrctl.report.detections) and ``per_category/<bbox|segm>`` (a
  ``wandb.Table`` of per-category AP, AP50, AP75).
* **summary**: ``final/<bbox|segm>/<AP..APl>``.
* **artifacts**: ``<run dir name>`` of type ``bbrctl-run`` (results.json, config.yaml), and
  ``model-<run dir name>`` of type ``model`` (the final checkpoint, referenced, not copied)
  with the aliases ``latest`` and, when its AP is the best of the run's evaluations,
  ``best``; logged when ``wandb.log_checkpoint`` is true, or null (the default) and the run
  goes online.
* **metrics**: ``iteration`` is the x axis of every curve (``define_metric``) and
  ``eval/*`` summaries keep their maximum.

Run identity and resume: ``<run_dir>/wandb_run.json`` holds a random W&B run id
(created with the directory's first W&B run, so a directory deleted and run again at the
same path gets a new W&B run) and ``last_step``, the last iteration logged. A resumed or
requeued job continues the same W&B run (``resume="allow"``; offline, a new segment
``offline-run-*-<id>`` that ``wandb sync`` appends) and skips every step up to
``last_step``: the iterations redone since the last checkpoint are not logged twice.
``last_step`` is written before the steps are handed to W&B, so a hard kill can lose at
most the steps of one log period, never log one twice.

Files: ``$WANDB_DIR/wandb/`` when WANDB_DIR is set, else ``<run_dir>/wandb/``.

Mode from ``cfg.wandb.mode``: online | offline | disabled (an explicit ``WANDB_MODE``
wins; tests set it to disabled). ``online`` without an API key (``WANDB_API_KEY`` or a
``~/.netrc`` entry, as wandb itself looks) falls back to offline, so a run never stops
at a login prompt. wandb is imported only when the mode is not disabled; the API key is
never read into or written by bbrctl. Failures while logging the end-of-run extras are
warnings in train.log, never a failed training run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from bbrctl import extras
from bbrctl.config import wandb_settings

MODES = ("online", "offline", "disabled")
STATE = "wandb_run.json"
ARTIFACT_TYPE = "bbrctl-run"
DEFAULT_IMAGES = 4
_TAG_MAX = 64
_NAME_BAD = re.compile(r"[^A-Za-z0-9._-]+")


# --------------------------------------------------------------------------- identity


def new_run_id() -> str:
    """A fresh W&B run id: 16 random lowercase hex characters."""
    return secrets.token_hex(8)


def load_state(run_dir: str | os.PathLike) -> dict:
    """``<run_dir>/wandb_run.json`` ({"id", "last_step"}), created with a new id if absent."""
    from bbrctl import store

    path = Path(run_dir) / STATE
    state = store.read_json(path)
    if isinstance(state, dict) and isinstance(state.get("id"), str) and re.fullmatch(r"[a-z0-9]{8,64}", state["id"]):
        state["last_step"] = int(state.get("last_step") or 0)
        return state
    state = {"id": new_run_id(), "last_step": 0, "created": time.time()}
    store.atomic_write_json(path, state)
    return state


def run_id(run_dir: str | os.PathLike) -> str | None:
    """The W&B run id recorded in a run directory, or None when it never logged to W&B."""
    from bbrctl import store

    state = store.read_json(Path(run_dir) / STATE)
    return state.get("id") if isinstance(state, dict) else None


def run_group(cfg: Mapping[str, Any], job: Mapping[str, Any] | None, run_dir: Path) -> str:
    return wandb_settings.run_group(cfg, (job or {}).get("sweep"), run_dir.name)


def swept_values(job: Mapping[str, Any] | None, run_dir: Path) -> list[str]:
    """``key=value`` of the keys the job's sweep varies (job.json overrides, sweep.json keys)."""
    from bbrctl import store

    job = job or {}
    if not job.get("sweep"):
        return []
    manifest = store.read_json(store.SweepDir(run_dir.parent).manifest) or {}
    keys = set(manifest.get("swept_keys") or [])
    out = []
    for o in job.get("overrides") or []:
        k, sep, v = str(o).partition("=")
        if sep and k.lstrip("+~") in keys:
            out.append(f"{k.lstrip('+~')}={v}")
    return out


def run_tags(cfg: Mapping[str, Any], job: Mapping[str, Any] | None, run_dir: Path) -> list[str]:
    from bbrctl.redact import redact_text

    extra = (cfg.get("wandb") or {}).get("tags") or []
    if isinstance(extra, str):
        extra = [extra]
    tags = []
    for t in [*swept_values(job, run_dir), *[str(x) for x in extra]]:
        t = redact_text(t)[:_TAG_MAX]
        if t and t not in tags:
            tags.append(t)
    return tags


def run_config(cfg: Mapping[str, Any], job: Mapping[str, Any] | None, run_dir: Path) -> dict:
    """The config W&B gets: redacted, launcher reduced to its name, bbrctl's bookkeeping added."""
    from bbrctl.redact import public, public_overrides

    out = public(dict(cfg))
    launcher = out.get("launcher")
    if isinstance(launcher, dict):
        out["launcher"] = {"name": launcher.get("name")}
    job = job or {}
    out["bbrctl"] = {"signature": job.get("signature"), "sweep": job.get("sweep"), "run_dir": str(run_dir),
                     "overrides": public_overrides(job.get("overrides") or [])}
    return out


def artifact_name(run_dir: Path) -> str:
    return (_NAME_BAD.sub("_", run_dir.name).strip("._-") or "run")[:128]


@contextlib.contextmanager
def _redacted_argv() -> Iterator[None]:
    """W&B records sys.argv; ``bbrctl train launcher.setup=[...]`` could carry a token."""
    from bbrctl.redact import public_overrides

    saved = sys.argv
    sys.argv = [saved[0], *public_overrides(saved[1:])] if saved else saved
    try:
        yield
    finally:
        sys.argv = saved


# --------------------------------------------------------------------------- mode


def resolve_mode(configured: str | None) -> str:
    """The mode a run uses (bbrctl.config.wandb_settings.resolve, which also says why)."""
    return wandb_settings.resolve(configured)[0]


def wandb_root(run_dir: Path) -> str:
    """``dir=`` for wandb.init: $WANDB_DIR when set, else the run directory. Passed
    explicitly: wandb reads its environment once per process, at the first init."""
    return os.environ.get("WANDB_DIR") or str(run_dir)


# --------------------------------------------------------------------------- the sink


class WandbSink:
    """Log to W&B when enabled; every method is a no-op when disabled."""

    def __init__(self, cfg: Mapping[str, Any], run_dir: str | os.PathLike, name: str | None = None,
                 job: Mapping[str, Any] | None = None):
        wcfg = dict(cfg.get("wandb") or {})
        self.mode, fallback = wandb_settings.resolve(wcfg.get("mode"))
        self.run = None
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.wcfg = wcfg
        self.job = dict(job or {})
        if self.mode == "disabled":
            return
        wandb = extras.require("wandb")

        self.state = load_state(self.run_dir)
        # Steps up to here were logged by an earlier process of this run directory.
        self.resume_after = int(self.state["last_step"])
        root = wandb_root(self.run_dir)
        (Path(root) / "wandb").mkdir(parents=True, exist_ok=True)
        self.group = run_group(cfg, self.job, self.run_dir)
        with _redacted_argv():
            self.run = wandb.init(
                project=wcfg.get("project") or "bbrctl", entity=wcfg.get("entity"), group=self.group,
                job_type="train", name=name or self.run_dir.name, id=self.state["id"], resume="allow",
                dir=root, mode=self.mode, config=run_config(cfg, self.job, self.run_dir),
                tags=run_tags(cfg, self.job, self.run_dir))
        # The iteration is the x axis of every curve; AP's summary is its best value.
        self.run.define_metric("iteration")
        self.run.define_metric("train/*", step_metric="iteration")
        self.run.define_metric("eval/*", step_metric="iteration", summary="max")
        if fallback:
            self._note(fallback)
        self._note(f"W&B run {self.state['id']} ({self.mode}, project {wcfg.get('project') or 'bbrctl'}, group "
                   f"{self.group}): {self.location}" + (f"; resuming after step {self.resume_after}"
                                                         if self.resume_after else ""))

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def describe(self) -> dict | None:
        """What results.json records of the W&B run (None when disabled)."""
        if self.run is None:
            return None
        return {"id": self.state["id"], "mode": self.mode, "project": self.wcfg.get("project") or "bbrctl",
                "group": self.group, "location": self.location, "segments": self.segments()}

    def segments(self) -> list[str]:
        """Every offline segment of this W&B run (one per process that logged: resumes, requeues),
        oldest first; ``wandb sync`` needs them all to upload the whole run."""
        if self.run is None or self.mode != "offline":
            return []
        base = Path(wandb_root(self.run_dir)) / "wandb"
        return [str(p) for p in sorted(base.glob(f"offline-run-*-{self.state['id']}")) if p.is_dir()]

    @property
    def location(self) -> str:
        """The run's URL online, its local directory offline."""
        if self.run is None:
            return ""
        url = getattr(self.run, "url", None) if self.mode == "online" else None
        files = getattr(self.run, "dir", None)  # <run>/files
        return str(url or (Path(files).parent if files else ""))

    # ---- history

    def _advance(self, step: int) -> None:
        if step > self.state["last_step"]:
            from bbrctl import store

            self.state["last_step"] = int(step)
            store.atomic_write_json(self.run_dir / STATE, self.state)

    def log_history(self, rows: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Log ``(step, values)`` rows, skipping steps an earlier process already logged."""
        if self.run is None:
            return
        rows = [(int(s), v) for s, v in rows if int(s) > self.resume_after]
        if not rows:
            return
        self._advance(max(s for s, _ in rows))  # first: a kill now loses steps, never doubles them
        for step, values in rows:
            self.run.log({**values, "iteration": step}, step=step)

    def log(self, values: Mapping[str, Any], step: int) -> None:
        self.log_history([(step, values)])

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.run is not None:
            for k, v in values.items():
                self.run.summary[k] = v

    # ---- end of run

    def finish_run(self, results: Mapping[str, Any], device: str = "cpu") -> None:
        """Summary, per-category AP tables, the image panel and the run's artifact."""
        if self.run is None:
            return
        metrics = results.get("metrics") or {}
        self.summary({f"final/{t}/{k}": v for t, m in metrics.items() for k, v in m.items()})
        wandb = extras.require("wandb")

        payload: dict[str, Any] = {}
        for iou_type, rows in (results.get("per_category") or {}).items():
            payload[f"per_category/{iou_type}"] = wandb.Table(
                columns=["category_id", "category", "AP", "AP50", "AP75"],
                data=[[r.get("category_id"), r.get("name"), r.get("AP"), r.get("AP50"), r.get("AP75")] for r in rows])
        n_images = self.wcfg.get("images", DEFAULT_IMAGES)
        if n_images:
            try:
                payload["val/detections"] = wandb.Image(self._panel(int(n_images), device),
                                                        caption=f"{self.run_dir.name}: ground truth (dashed) "
                                                                "and detections")
            except Exception as e:  # noqa: BLE001 - a picture must never fail a finished run
                self._note(f"W&B: no image panel ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
        if payload:
            step = max(int(results.get("iteration") or 0), self.resume_after + 1)
            self._advance(step)
            self.run.log(payload, step=step)
        try:
            self.run.log_artifact(self._artifact(results))
        except Exception as e:  # noqa: BLE001
            self._note(f"W&B: no artifact ({type(e).__name__}: {' '.join(str(e).split())[:200]})")
        if self.logs_model():
            try:
                art = self._model_artifact(results)
                if art is not None:
                    self.run.log_artifact(art, aliases=self.model_aliases(results))
            except Exception as e:  # noqa: BLE001
                self._note(f"W&B: no model artifact ({type(e).__name__}: {' '.join(str(e).split())[:200]})")

    def logs_model(self) -> bool:
        """``wandb.log_checkpoint``: true, false, or null (the default): on for runs that go online."""
        setting = self.wcfg.get("log_checkpoint")
        return self.mode == "online" if setting is None else bool(setting)

    def model_aliases(self, results: Mapping[str, Any]) -> list[str]:
        """["latest"], plus "best" when the final AP is the best of every evaluation of the run."""
        from bbrctl import store

        final = ((results.get("metrics") or {}).get("bbox") or {}).get("AP")
        aps = []
        try:
            lines = (self.run_dir / store.METRICS).read_text().splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                ap = json.loads(line).get("eval", {}).get("bbox", {}).get("AP")
            except (ValueError, AttributeError):
                continue
            if isinstance(ap, (int, float)):
                aps.append(float(ap))
        best = isinstance(final, (int, float)) and all(final >= a - 1e-9 for a in aps)
        return ["latest", *(["best"] if best else [])]

    def _model_artifact(self, results: Mapping[str, Any]):
        wandb = extras.require("wandb")
        from bbrctl.detection.train.checkpoint import checkpoint_path

        ck = checkpoint_path(self.run_dir)
        if not ck.is_file():
            return None
        art = wandb.Artifact(f"model-{artifact_name(self.run_dir)}", type="model",
                             description=f"bbrctl run {self.run_dir.name}: final checkpoint "
                                         f"(iteration {results.get('iteration')})",
                             metadata={"run_dir": str(self.run_dir), "signature": self.job.get("signature"),
                                       "iteration": results.get("iteration"),
                                       "metrics": dict(results.get("metrics") or {})})
        # Referenced in place: a checkpoint can be large, and it no longer changes.
        art.add_file(str(ck), name=ck.name, policy="immutable")
        return art

    def _panel(self, n: int, device: str):
        """The val image grid as a PIL image (drawn by bbrctl.report.detections)."""
        from PIL import Image

        from bbrctl.detection.eval import predict as P
        from bbrctl.detection.tracking.pictures import Panel, draw_grid, wrap

        model, cfg = P.load_run_model(self.run_dir, device)
        ds = P.val_dataset(cfg)
        picked = P.pick_images(ds, n)
        preds = P.predict(model, ds, picked, device)
        panels = []
        for i, pr in zip(picked, preds):
            gt = P.ground_truth(ds, i)
            panels.append(Panel(ds.load_image(i), gt["boxes"], gt["labels"], pr["boxes"], pr["scores"], pr["labels"],
                                title=f"val image {ds.index.images[i]['id']}"))
        import io

        png = draw_grid(wrap(panels), P.class_names(ds))
        with Image.open(io.BytesIO(png)) as im:
            return im.convert("RGB")

    def _artifact(self, results: Mapping[str, Any]):
        wandb = extras.require("wandb")

        from bbrctl import store

        art = wandb.Artifact(artifact_name(self.run_dir), type=ARTIFACT_TYPE,
                             description=f"bbrctl run {self.run_dir.name}: results, config",
                             metadata={"run_dir": str(self.run_dir), "signature": self.job.get("signature"),
                                       "sweep": self.job.get("sweep"), "metrics": dict(results.get("metrics") or {})})
        for name in (store.RESULTS, store.CONFIG):
            if (self.run_dir / name).is_file():
                art.add_file(str(self.run_dir / name), name=name)
        return art

    def _note(self, msg: str) -> None:
        from bbrctl import store
        from bbrctl.errors import StorageError
        from bbrctl.redact import redact_text

        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {redact_text(msg)}"
        try:
            store.append_lines(self.run_dir / store.LOG, line + "\n")
        except (OSError, StorageError):  # a note must not end the run
            pass
        print(line, file=sys.stderr, flush=True)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None

