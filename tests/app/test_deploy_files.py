"""Static checks of the Dockerfile, docker-compose.yml and .dockerignore (no Docker daemon needed)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> str:
    # Join continuation lines so each instruction is one line.
    return re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())


def stages(dockerfile: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (comments dropped)."""
    out: dict[str, list[str]] = {}
    current = None
    for line in dockerfile.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = m.group(1)
            out[current] = []
        if current is not None:
            out[current].append(line)
    return out


# ------------------------------------------------------------------------------------------------- compose


def test_services(services: dict) -> None:
    assert {"api", "redis", "postgres", "trainer", "api-gpu"} <= set(services)


def test_api(services: dict) -> None:
    api = services["api"]
    build = api["build"]
    assert build["context"] == "." and build.get("target", "serve") == "serve"
    assert "8000:8000" in api["ports"]
    env = api["environment"]
    assert env["HHVAEM_DATABASE_URL"] == "postgresql+psycopg://hhvaem:hhvaem@postgres:5432/hhvaem"
    assert env["HHVAEM_REDIS_URL"] == "redis://redis:6379/0"
    assert env["HHVAEM_MODELS_DIR"] == "/models"
    assert "models:/models:ro" in api["volumes"]
    assert api["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
        "trainer": {"condition": "service_completed_successfully"},
    }
    test = " ".join(api["healthcheck"]["test"])
    assert "/healthz" in test and "8000" in test
    assert "profiles" not in api


def test_api_gpu(services: dict) -> None:
    gpu = services["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert gpu["environment"]["HHVAEM_REDIS_URL"] == services["api"]["environment"]["HHVAEM_REDIS_URL"]
    assert gpu["environment"]["HHVAEM_DEVICE"] == "cuda"
    assert "models:/models:ro" in gpu["volumes"]
    assert gpu["depends_on"]["trainer"] == {"condition": "service_completed_successfully"}
    assert "/healthz" in " ".join(gpu["healthcheck"]["test"])
    host_ports = {p.split(":")[0] for s in services.values() for p in s.get("ports", []) if s is not gpu}
    assert not host_ports & {p.split(":")[0] for p in gpu["ports"]}  # both APIs can run side by side


def test_redis(services: dict) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_postgres(services: dict) -> None:
    pg = services["postgres"]
    assert pg["image"].startswith("postgres:16")
    assert pg["environment"]["POSTGRES_USER"] == "hhvaem" and pg["environment"]["POSTGRES_DB"] == "hhvaem"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_trainer(services: dict) -> None:
    trainer = services["trainer"]
    assert trainer["build"]["target"] == "trainer"
    command = " ".join(trainer["command"]) if isinstance(trainer["command"], list) else trainer["command"]
    assert re.search(r"hhvaem train /data/\S+ --target \S+\s+--out /models/", command)
    assert "models:/models" in trainer["volumes"]
    assert any(v.split(":")[1] == "/data" for v in trainer["volumes"])
    assert trainer.get("restart", "no") == "no"
    assert "ports" not in trainer


def test_named_volumes_declared(compose: dict, services: dict) -> None:
    declared = set(compose["volumes"])
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


# ---------------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_basics(dockerfile: str) -> None:
    s = stages(dockerfile)
    assert list(s)[-1] == "serve", "the serving stage must be last (the default target)"
    serve = "\n".join(s["serve"])
    assert re.search(r"^ARG DEVICE=cpu$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM runtime-\$\{DEVICE\} AS serve$", serve, re.MULTILINE)
    assert {"runtime-cpu", "runtime-cuda", "trainer"} <= set(s)
    assert re.search(r"^EXPOSE 8000$", serve, re.MULTILINE)
    healthcheck = re.search(r"^HEALTHCHECK .*$", serve, re.MULTILINE)
    assert healthcheck and "/healthz" in healthcheck.group(0) and "8000" in healthcheck.group(0)
    assert 'ENTRYPOINT ["hhvaem"]' in serve
    assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]' in serve


def test_non_root(dockerfile: str) -> None:
    s = stages(dockerfile)
    for stage in ("serve", "trainer"):
        users = [line.split()[1] for line in s[stage] if line.startswith("USER ")]
        assert users and users[-1] not in ("root", "0"), stage


def test_base_images(dockerfile: str) -> None:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:") and "runtime" in args["CUDA_IMAGE"]
    s = stages(dockerfile)
    assert s["runtime-cpu"][0].startswith("FROM ${PYTHON_IMAGE}")
    assert s["runtime-cuda"][0].startswith("FROM ${CUDA_IMAGE}")


def test_serving_has_no_train_extra_and_cuda_swaps_onnxruntime(dockerfile: str) -> None:
    s = stages(dockerfile)
    for stage in ("runtime-cpu", "runtime-cuda", "serve"):
        text = "\n".join(s[stage])
        assert "[train]" not in text and "torch" not in text, stage
    cuda = "\n".join(s["runtime-cuda"])
    assert "pip uninstall -y onnxruntime" in cuda and "onnxruntime-gpu" in cuda
    assert cuda.index("uninstall -y onnxruntime") < cuda.index('install "onnxruntime-gpu')
    assert "onnxruntime-gpu" not in "\n".join(s["runtime-cpu"])


def test_trainer_pins_torch(dockerfile: str) -> None:
    trainer = "\n".join(stages(dockerfile)["trainer"])
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in trainer
    assert "[train]" in trainer
    assert trainer.index("torch==2.13.0") < trainer.index("[train]")


def test_no_unpinned_torch_anywhere(dockerfile: str) -> None:
    for line in dockerfile.splitlines():
        if "pip install" not in line:
            continue
        for token in shlex.split(line.split("pip install", 1)[1].split("&&")[0]):
            if re.match(r"^torch([<>=!~\[]|$)", token):
                assert re.match(r"^torch==\d+\.\d+\.\d+", token), line


def test_dockerignore_keeps_build_inputs() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for excluded in (".git", ".venv", "tests"):
        assert excluded in patterns
    for needed in ("pyproject.toml", "README.md", "model", "training", "app", "hhvaem"):
        assert needed not in patterns
        assert (ROOT / needed).exists(), needed
