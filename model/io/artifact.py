"""The artifact format: the contract between training (writes) and serving (reads).

An artifact is a directory with `manifest.json` (the single source of truth: format
version, schema, preprocessing, architecture, sampler, the graphs and their contract
(`model.io.contract`), metrics, sha256 of every file), the ONNX graphs serving runs and
the torch state for fine-tuning. This module needs neither torch nor onnxruntime, so
both sides share one verifier.

Integrity: an artifact is identified by the sha256 of its `manifest.json` (`manifest_checksum`), and the manifest
lists the sha256 of every other file, so "the manifest hashes to C and every file hashes to what that manifest
lists" covers every byte of the artifact. The registry records C at registration; `verify_artifact(path, C)`
checks all of it again (every process, on every load and whenever a file's stat changes: `file_stats`).
A manifest is also checked for shape before anything reads it (`check_manifest`): a usable name, the sections
serving reads, and file names that stay inside the directory. The writer seals it (`manifest_text` adds `seal`, the
sha256 of its canonical JSON without the seal), so an edit made after export (e.g. to the preprocessing statistics)
is refused at registration too. A seal is tamper-evidence against edits by hand or by a tool, not a signature:
whoever can write the directory can recompute it. Manifests written before seals existed have none and are read
as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

# 2: adds the ONNX sampler graph; 3: the graphs and their contract under `graphs`, T stored once (sampler);
# 4: the checkpoint's dependency VAE lays its units out in blocks per likelihood family (model.dependency);
# 5: per-column warps in the preprocessing stats, the zero_positive family, a bounded code scale. A version-4
# artifact means the same under this build (no warps, unbounded scales), so both are read; a build that reads
# only 4 refuses a version-5 artifact instead of decoding its warped columns wrongly.
# A schema column's `description` and `labels` (model.schema.Column) are optional and change no value's meaning
# (the codes stay the values), so they need no new version: older artifacts have none, and a build that predates
# them reads an artifact that has them and ignores them.
FORMAT_VERSION = 5
READABLE_VERSIONS = (4, 5)
MANIFEST = "manifest.json"
CHECKPOINT = "model.pt"


# A model name: it appears in URLs (/v1/models/<name>), log lines and the database.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
NAME_RULE = "1-200 characters: letters, digits, '_', '.', '-', starting with a letter or digit"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The sections serving reads, and their JSON type.
_SECTIONS = {"schema": dict, "preprocessing": dict, "sampler": dict, "architecture": dict, "files": dict}


class ArtifactError(ValueError):
    """An artifact directory that cannot be loaded; the message says which file and why."""


def name_problem(name: Any) -> str | None:
    """Why `name` cannot be a model's name, or None when it can."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return f"a model name must be {NAME_RULE}"
    return None


def check_manifest(manifest: Any, where: str | Path, require_graphs: bool = False) -> dict[str, Any]:
    """`manifest` if it has the shape serving relies on, else ArtifactError naming the first thing wrong."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: not a JSON object")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{where}: format version {version!r} is not supported (this build reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}; "
            "re-export with `hhvaem export`)"
        )
    if "name" in manifest and name_problem(manifest["name"]):
        raise ArtifactError(f"{where}: name {str(manifest['name'])[:60]!r} is not usable: {name_problem(None)}")
    for section, kind in _SECTIONS.items():
        if not isinstance(manifest.get(section), kind):
            what = "missing" if section not in manifest else f"a {type(manifest[section]).__name__}"
            raise ArtifactError(f"{where}: `{section}` must be a JSON object, but it is {what}")
    schema = manifest["schema"]
    for part in ("features", "targets"):
        columns = schema.get(part)
        if not isinstance(columns, list) or not all(isinstance(c, dict) and "name" in c for c in columns):
            raise ArtifactError(f"{where}: `schema.{part}` must be a list of columns, each with a name")
    if not schema["features"]:
        raise ArtifactError(f"{where}: `schema.features` lists no feature")
    for fname, digest in manifest["files"].items():
        if not _plain_file_name(fname):
            raise ArtifactError(f"{where}: `files` lists {str(fname)[:60]!r}, which is not a file in the directory")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ArtifactError(f"{where}: `files.{fname}` must be a sha256 hex digest")
    graphs = manifest.get("graphs")
    if graphs is not None or require_graphs:
        if not isinstance(graphs, dict) or not graphs or not all(isinstance(g, dict) for g in graphs.values()):
            raise ArtifactError(f"{where}: `graphs` must map each graph's name to its description")
    return manifest


def _plain_file_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and name not in (".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
        and name.isprintable()
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _canonical_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def manifest_text(manifest: dict[str, Any]) -> str:
    """The text of `manifest.json` for `manifest`, sealed: what a writer puts on disk."""
    plain = json.loads(json.dumps(manifest, default=float))  # the values as they read back (numpy types, tuples)
    plain["seal"] = _canonical_digest(plain)
    return json.dumps(plain, indent=2)


def read_manifest(path: str | Path, require_graphs: bool = False, checksum: str | None = None) -> dict[str, Any]:
    """Reads and verifies a manifest: its shape, format version, the checksum of every listed file, and (with
    `require_graphs`, as serving needs) that it lists graphs whose files are checksummed. With `checksum`, the
    manifest itself must hash to it (what the registry recorded): then every byte of the artifact is checked."""
    d = Path(path)
    mf = d / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{d}: no {MANIFEST} (not an artifact directory)")
    raw = mf.read_bytes()
    if checksum is not None and hashlib.sha256(raw).hexdigest() != checksum:
        raise ArtifactError(f"{d}: {MANIFEST} changed since registration (its checksum differs)")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise ArtifactError(f"{mf}: not valid JSON ({getattr(e, 'msg', 'not UTF-8')}{where})") from None
    check_manifest(manifest, mf, require_graphs)
    if "seal" in manifest and manifest["seal"] != _canonical_digest(manifest):
        raise ArtifactError(f"{mf}: edited after export (its seal does not match its content)")
    files = manifest["files"]
    if require_graphs:
        missing = [g.get("file") for g in manifest["graphs"].values() if g.get("file") not in files]
        if missing:
            raise ArtifactError(f"{d}: the manifest lists no {missing[0]} (export it with `hhvaem export {d}`)")
    for fname, digest in files.items():
        f = d / fname
        if not f.is_file():
            raise ArtifactError(f"{d}: file {fname} listed in the manifest is missing")
        if sha256_file(f) != digest:
            what = "since registration" if checksum is not None else "after export"
            raise ArtifactError(f"{d}: checksum mismatch for {fname} (file changed {what})")
    return manifest


def manifest_checksum(path: str | Path) -> str:
    """sha256 of manifest.json: identifies one exported artifact (it covers every file's checksum)."""
    return sha256_file(Path(path) / MANIFEST)


def file_stats(path: str | Path, manifest: dict[str, Any]) -> tuple:
    """Size, modification and change times and inode of the manifest and every listed file: cheap to take, and
    any write to a file changes it (the change time cannot be set back), so a verified artifact needs hashing
    again only when this changes. A missing file shows as None."""
    d = Path(path)
    out = []
    for fname in [MANIFEST, *sorted(manifest.get("files", {}))]:
        try:
            st = os.stat(d / fname)
        except OSError:
            out.append((fname, None))
            continue
        out.append((fname, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    return tuple(out)
