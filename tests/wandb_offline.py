"""Read what wandb wrote offline: the ``run-<id>.wandb`` transaction log of each run segment.

The file is a LevelDB-style log (wandb's own format): a 7-byte header (":W&B", magic
0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header (CRC32,
length, type FULL/FIRST/MIDDLE/LAST); a record's chunks concatenated are one
``wandb_internal_pb2.Record``. A torn tail (a killed process) ends the read.

    seg = Segment.read(path)          # one offline-run-*/ directory's log
    seg.run.run_id, seg.run.run_group, list(seg.run.tags)
    seg.history                        # [{"_step": 1, "train/loss": ...}, ...]
    seg.summary, seg.config, seg.artifacts
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, (ident, magic, version)
    pos, buf = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            return  # torn tail
        pos += HEADER + length
        buf = chunk if kind in (FULL, FIRST) else buf + chunk
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def _items(items) -> dict:
    """{key: value}; a nested key (["val/detections", "path"]) becomes nested dicts."""
    out: dict = {}
    for it in items:
        path = list(it.nested_key) or [it.key]
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = json.loads(it.value_json)
    return out


@dataclass
class Segment:
    path: Path
    run: object = None
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    artifacts: list = field(default_factory=list)
    args: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)   # define_metric records by name or glob
    exit_code: int | None = None

    @classmethod
    def read(cls, path: Path) -> "Segment":
        seg = cls(Path(path))
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                seg.run = r.run
                seg.config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
            elif kind == "config":
                seg.config.update({u.key: json.loads(u.value_json) for u in r.config.update})
            elif kind == "history":
                row = _items(r.history.item)
                row["_step"] = int(r.history.step.num) if r.history.HasField("step") else row.get("_step")
                seg.history.append(row)
            elif kind == "summary":
                seg.summary.update(_items(r.summary.update))
            elif kind == "artifact":
                seg.artifacts.append(r.artifact)
            elif kind == "metric":
                seg.metrics[r.metric.name or r.metric.glob_name] = r.metric
            elif kind == "environment":
                seg.args.extend(r.environment.args)
            elif kind == "exit":
                seg.exit_code = int(r.exit.exit_code)
        return seg

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def steps(self) -> list[int]:
        return [int(h["_step"]) for h in self.history]

    def media(self, key: str) -> list[Path]:
        """Files a media value (image, table) of ``key`` points at, over the history."""
        out = []
        for h in self.history:
            v = h.get(key)
            if isinstance(v, dict) and v.get("path"):
                out.append(self.dir / "files" / v["path"])
        return out


def segments(wandb_dir: Path, run_id: str | None = None, wait_s: float = 15.0) -> list[Segment]:
    """Every offline segment under ``wandb_dir`` (of ``run_id`` if given), oldest first.

    ``run.finish()`` can return before wandb's service has written the file out, so a
    segment without its exit record is read again for up to ``wait_s`` seconds (a killed
    run's segment never gets one: it is returned as it is then).
    """
    import time

    pattern = f"offline-run-*-{run_id}/run-{run_id}.wandb" if run_id else "offline-run-*/run-*.wandb"
    paths = sorted(Path(wandb_dir).rglob(pattern))
    deadline = time.monotonic() + wait_s
    out = []
    for p in paths:
        seg = Segment.read(p)
        while seg.exit_code is None and time.monotonic() < deadline:
            time.sleep(0.1)
            seg = Segment.read(p)
        out.append(seg)
    return out
