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

from hhvaem.model.export import export_graphs
from hhvaem.model.hhvaem import HHVAEM
from hhvaem.model.io.artifact import (
    CHECKPOINT,
    FORMAT_VERSION,
    MANIFEST,
    ArtifactError,
    manifest_text,
    read_manifest,
    sha256_file,
)
from hhvaem.model.preprocessing import Preprocessor
from hhvaem.model.schema import Schema

__all__ = ["ArtifactError", "read_manifest", "write_artifact", "export_artifact", "load_model", "data_fingerprint"]


def data_fingerprint(df: pd.DataFrame) -> dict[str, Any]:
    """A hash of the training table's content (column names and values), plus its shape."""
    h = hashlib.sha256()
    h.update(json.dumps(list(map(str, df.columns))).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    return {"sha256": h.hexdigest(), "rows": int(len(df)), "columns": int(df.shape[1])}


# The architecture section: the networks' shape. The sampler's settings live in the sampler section only.
ARCHITECTURE_KEYS = ("variant", "latent_dims", "hidden", "marginal_hidden")


def architecture_manifest(model: HHVAEM) -> dict[str, Any]:
    return {
        **{k: v for k, v in model.config.to_dict().items() if k in ARCHITECTURE_KEYS},
        "n_features": len(model.schema.features),
        "n_targets": len(model.schema.targets),
        "latent_size": model.latent_size,
    }


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
    export_onnx: bool = True,
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
        "architecture": architecture_manifest(model),
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
    if export_onnx:
        _add_predictive_graph(out, model, manifest)
    (out / MANIFEST).write_text(manifest_text(manifest))  # sealed: an edit after export is refused
    return manifest


def _add_predictive_graph(out: Path, model: HHVAEM, manifest: dict[str, Any]) -> None:
    import onnx

    manifest["graphs"] = export_graphs(model, out)
    for entry in manifest["graphs"].values():
        manifest["files"][entry["file"]] = sha256_file(out / entry["file"])
    manifest["versions"]["onnx"] = onnx.__version__


def export_artifact(path: str | Path) -> dict[str, Any]:
    """(Re-)exports the ONNX graph of an artifact from its torch state; upgrades older formats.

    The checkpoint's checksum is verified first, so a changed model.pt is refused, not exported.
    """
    d = Path(path)
    mf = d / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST} (not an artifact directory)")
    manifest = json.loads(mf.read_text())
    digest = manifest.get("files", {}).get(CHECKPOINT)
    if not (d / CHECKPOINT).is_file() or digest is None:
        raise ArtifactError(f"{d}: no {CHECKPOINT} listed in the manifest; nothing to export from")
    if sha256_file(d / CHECKPOINT) != digest:
        raise ArtifactError(f"{d}: checksum mismatch for {CHECKPOINT} (file changed after training)")
    model, _ = _model_from_checkpoint(d, manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = {CHECKPOINT: digest}
    manifest.pop("onnx", None)  # format 2's graph entry
    manifest["architecture"] = architecture_manifest(model)
    manifest["sampler"] = sampler_manifest(model)
    _add_predictive_graph(d, model, manifest)
    mf.write_text(manifest_text(manifest))
    return manifest


def load_model(path: str | Path) -> tuple[HHVAEM, Preprocessor, dict[str, Any]]:
    """The torch model (for fine-tuning, export, evaluation) from a verified artifact."""
    d = Path(path)
    manifest = read_manifest(d)
    model, schema = _model_from_checkpoint(d, manifest)
    return model, Preprocessor.from_dict(schema, manifest["preprocessing"]), manifest


def _model_from_checkpoint(d: Path, manifest: dict[str, Any]) -> tuple[HHVAEM, Schema]:
    model = HHVAEM.from_checkpoint(torch.load(d / CHECKPOINT, map_location="cpu", weights_only=True))
    return model, model.schema
