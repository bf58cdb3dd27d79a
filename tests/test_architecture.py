"""The layers of docs/architecture.md, enforced: no import from a lower layer into a higher one, serving without
torch, one `hhvaem` namespace in the wheel."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> installed package (pyproject's package-dir mapping).
FOLDERS = {"hhvaem": "hhvaem", "model": "hhvaem.model", "training": "hhvaem.training", "app": "hhvaem.app"}

# The layers, lowest first. A module belongs to the first layer whose prefix it has.
FOUNDATION = (
    "hhvaem.model.families",
    "hhvaem.model.schema",
    "hhvaem.model.preprocessing",
    "hhvaem.model.acquisition",
    "hhvaem.model.calibration",
    "hhvaem.model.io",
)
LAYERS = {
    "foundation": FOUNDATION,
    "model": ("hhvaem.model",),
    "engine": ("hhvaem.app.engine",),
    "training": ("hhvaem.training",),
    "service": ("hhvaem.app",),
    "roof": ("hhvaem",),
}
# What each layer may import from the project (besides itself).
ALLOWED = {
    "foundation": set(),
    "model": {"foundation"},
    "engine": {"foundation"},
    "training": {"foundation", "model", "engine"},
    "service": {"foundation", "engine"},
    "roof": {"foundation", "model", "engine", "training", "service"},
}
# Deliberate exceptions, each with its reason.
EXCEPTIONS = {
    # the optional torch backend builds the same graph from the checkpoint, imported only when chosen
    ("hhvaem.app.engine.backends", "hhvaem.model.export"),
    ("hhvaem.app.engine.backends", "hhvaem.model.hhvaem"),
    ("hhvaem.app.engine.backends", "torch"),
}
NO_TORCH = ("foundation", "engine", "service")


def layer_of(module: str) -> str:
    for name, prefixes in LAYERS.items():
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    raise AssertionError(f"{module} is in no layer")


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def imports(path: Path) -> list[tuple[str, int]]:
    """Every absolute import (module level or inside functions) with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return found


def test_no_layer_imports_a_higher_one():
    known = modules()
    bad = []
    for module, path in known.items():
        mine = layer_of(module)
        for target, line in imports(path):
            if target == "torch" or target.startswith("torch."):
                if mine in NO_TORCH and (module, "torch") not in EXCEPTIONS:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports torch")
                continue
            if not target.startswith("hhvaem.") or target not in known:
                continue  # third-party, or a name imported from a module (its module is checked)
            theirs = layer_of(target)
            if theirs != mine and theirs not in ALLOWED[mine] and (module, target) not in EXCEPTIONS:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {target} ({theirs})")
    assert not bad, "layering broken (docs/architecture.md):\n" + "\n".join(bad)


def test_the_layer_rule_catches_a_violation(tmp_path):
    """The checker itself: an engine module importing training is reported."""
    path = tmp_path / "m.py"
    path.write_text("from hhvaem.training.fit import fit\n")
    assert imports(path) == [("hhvaem.training.fit", 1), ("hhvaem.training.fit.fit", 1)]
    assert layer_of("hhvaem.app.engine.x") == "engine" and "training" not in ALLOWED["engine"]


def test_every_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert packages == listed


def test_serving_runs_without_torch(demo_artifact):
    """The service and the engine import and answer with torch unavailable (onnxruntime + numpy only)."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from hhvaem.app.main import create_app\n"
        "from hhvaem.app.engine import Engine\n"
        "create_app()\n"
        f"e = Engine({str(demo_artifact)!r}, threads=1)\n"
        "print(round(e.impute([{}], samples=4, seed=0)[0]['acceptance_rate'], 3))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert out.returncode == 0, out.stderr
    assert 0.0 <= float(out.stdout.strip()) <= 1.0


def test_the_wheel_installs_one_namespace(tmp_path):
    """No generic top-level `app`, `model` or `training` in users' site-packages: the wheel holds `hhvaem/` only,
    with the questionnaire page and the migrations' template inside."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("hhvaem-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"hhvaem"}
    for needed in (
        "hhvaem/app/static/index.html",
        "hhvaem/app/migrations/script.py.mako",
        "hhvaem/model/io/contract.py",
    ):
        assert needed in names
    assert not any(n.startswith(("hhvaem/benchmarks", "benchmarks/")) for n in names)
