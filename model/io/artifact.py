"""The artifact format: the contract between training (writes) and serving (reads).

An artifact is a directory with `manifest.json` (the single source of truth: format
version, schema, preprocessing, architecture, sampler, the graphs and their contract
(`model.io.contract`), metrics, sha256 of every file), the ONNX graphs serving runs and
the torch state for fine-tuning. This module needs neither torch nor onnxruntime, so
both sides share one verifier.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# 2: adds the ONNX sampler graph; 3: the graphs and their contract under `graphs`, T stored once (sampler).
FORMAT_VERSION = 3
MANIFEST = "manifest.json"
CHECKPOINT = "model.pt"


class ArtifactError(ValueError):
    """An artifact directory that cannot be loaded; the message says which file and why."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | Path, require_graphs: bool = False) -> dict[str, Any]:
    """Reads and verifies a manifest: format version, the checksum of every listed file, and (with
    `require_graphs`, as serving needs) that it lists graphs whose files are checksummed."""
    d = Path(path)
    mf = d / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST} (not an artifact directory)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mf}: not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{mf}: format version {version!r} is not supported (this build reads {FORMAT_VERSION}; "
            "re-export with `hhvaem export`)"
        )
    files = manifest.get("files", {})
    if require_graphs:
        graphs = manifest.get("graphs") or {}
        missing = [g.get("file") for g in graphs.values() if g.get("file") not in files] if graphs else ["a graph"]
        if missing:
            raise ArtifactError(f"{d}: the manifest lists no {missing[0]} (export it with `hhvaem export {d}`)")
    for fname, digest in files.items():
        f = d / fname
        if not f.is_file():
            raise ArtifactError(f"{d}: file {fname} listed in the manifest is missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{d}: checksum mismatch for {fname} (file changed after export)")
    return manifest


def manifest_checksum(path: str | Path) -> str:
    """sha256 of manifest.json: identifies one exported artifact (it covers every file's checksum)."""
    return sha256_file(Path(path) / MANIFEST)
