"""The artifact directory: manifest.json (the single source of truth) + model.pt.

The manifest records the format version, schema, preprocessing statistics,
architecture, the tuned sampler (T, L, step sizes per step and dimension, mass,
inflation, default chains), training history and metrics, a fingerprint of the
training data, library versions and the sha256 of every file. Loading verifies
the format version and every checksum and refuses a mismatch with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from model.hhvaem import HHVAEM, ModelConfig
from model.preprocessing import Preprocessor
from model.schema import Schema

FORMAT_VERSION = 1
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


def data_fingerprint(df: pd.DataFrame) -> dict[str, Any]:
    """A hash of the training table's content (column names and values), plus its shape."""
    h = hashlib.sha256()
    h.update(json.dumps(list(map(str, df.columns))).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return {"sha256": h.hexdigest(), "rows": int(len(df)), "columns": int(df.shape[1])}


def sampler_manifest(model: HHVAEM) -> dict[str, Any]:
    cfg = model.config
    return {
        "uses_hmc": cfg.uses_hmc,
        "hmc_steps": cfg.hmc_steps,
        "leapfrog_steps": cfg.leapfrog_steps,
        "step_sizes": model.step_sizes.detach().tolist(),
        "mass": cfg.mass,
        "inflation": model.inflation.item(),
        "importance_samples": cfg.importance_samples,
        "default_chains": cfg.default_chains,
    }


def write_artifact(
    out: str | Path,
    model: HHVAEM,
    preprocessor: Preprocessor,
    history: dict,
    fingerprint: dict[str, Any],
    metrics: dict | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    torch.save(
        {"config": model.config.to_dict(), "schema": model.schema.to_dict(), "state_dict": model.state_dict()}, ckpt
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "schema": model.schema.to_dict(),
        "preprocessing": preprocessor.to_dict(),
        "architecture": {
            **model.config.to_dict(),
            "n_features": len(model.schema.features),
            "n_targets": len(model.schema.targets),
            "latent_size": model.latent_size,
        },
        "sampler": sampler_manifest(model),
        "training": history,
        "metrics": metrics or {},
        "data": fingerprint,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "files": {CHECKPOINT: sha256_file(ckpt)},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Reads and verifies a manifest: format version and the checksum of every listed file."""
    d = Path(path)
    mf = d / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST} (not an artifact directory)")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e.msg} at line {e.lineno})") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{mf}: format version {version!r} is not supported (this build reads {FORMAT_VERSION})")
    for fname, digest in manifest.get("files", {}).items():
        f = d / fname
        if not f.is_file():
            raise ArtifactError(f"{d}: file {fname} listed in the manifest is missing")
        if sha256_file(f) != digest:
            raise ArtifactError(f"{d}: checksum mismatch for {fname} (file changed after export)")
    return manifest


def load_model(path: str | Path) -> tuple[HHVAEM, Preprocessor, dict[str, Any]]:
    """The torch model (for fine-tuning, export, evaluation) from a verified artifact."""
    d = Path(path)
    manifest = read_manifest(d)
    ckpt = torch.load(d / CHECKPOINT, map_location="cpu", weights_only=True)
    schema = Schema.from_dict(manifest["schema"])
    cfg_dict = dict(ckpt["config"])
    model = HHVAEM(schema, ModelConfig(**cfg_dict))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, Preprocessor.from_dict(schema, manifest["preprocessing"]), manifest
