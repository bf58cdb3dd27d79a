"""Checks of the Dockerfile, docker-compose.yml and .dockerignore without a Docker daemon: their content, the
trainer's command run by a shell (with `hhvaem` stubbed), and `docker compose config` where a compose client is
installed. The stack itself, end to end, is `python -m benchmarks.compose_stack`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
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


def resolved(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation of `${VAR:-default}` / `${VAR}`: from `env`, else the default (none set here)."""
    env = env or {}

    def one(m: re.Match) -> str:
        return env.get(m.group(1)) or (m.group(3) or "")

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}", one, value)


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
    assert [resolved(p) for p in api["ports"]] == ["127.0.0.1:8000:8000"]
    assert [resolved(p, {"HHVAEM_API_PORT": "18000"}) for p in api["ports"]] == ["127.0.0.1:18000:8000"]
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
    host_ports = {published(p)[1] for s in services.values() for p in s.get("ports", []) if s is not gpu}
    assert not host_ports & {published(p)[1] for p in gpu["ports"]}  # both APIs can run side by side


def test_redis(services: dict) -> None:
    redis = services["redis"]
    assert resolved(redis["image"]) == "redis:7"
    command = redis["command"] if isinstance(redis["command"], list) else shlex.split(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_postgres(services: dict) -> None:
    pg = services["postgres"]
    assert resolved(pg["image"]) == "postgres:16"
    assert pg["environment"]["POSTGRES_USER"] == "hhvaem" and pg["environment"]["POSTGRES_DB"] == "hhvaem"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])


def test_trainer(services: dict) -> None:
    trainer = services["trainer"]
    assert trainer["build"]["target"] == "trainer"
    assert resolved(trainer["build"]["args"]["TORCH_INDEX_URL"]) == "https://download.pytorch.org/whl/cpu"
    assert "models:/models" in trainer["volumes"]
    assert any(v.split(":")[1] == "/data" for v in trainer["volumes"])
    assert trainer.get("restart", "no") == "no"
    assert "ports" not in trainer


def run_trainer_command(services: dict, tmp_path: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """The trainer's command as compose hands it to `/bin/sh -c` (interpolated with `env`), run with `hhvaem`
    stubbed (it records its arguments) and /models, /data moved under tmp_path; (its output, the stub's calls)."""
    trainer = services["trainer"]
    assert trainer["entrypoint"] == ["/bin/sh", "-c"]
    (command,) = trainer["command"]
    script = resolved(command, env).replace("/models", str(tmp_path / "models")).replace("/data", str(tmp_path / "d"))
    stub = tmp_path / "bin" / "hhvaem"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    stub.chmod(0o755)
    path = f"{stub.parent}{os.pathsep}{os.environ['PATH']}"
    out = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, env={"PATH": path}, timeout=30)
    assert out.returncode == 0, out.stderr
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return out.stdout, calls


def test_trainer_trains_the_demo_model_by_default(services: dict, tmp_path: Path) -> None:
    _, calls = run_trainer_command(services, tmp_path, {})
    assert calls == [f"demo --train-only --models {tmp_path / 'models'}"]


def test_trainer_trains_a_users_table_once(services: dict, tmp_path: Path) -> None:
    env = {
        "HHVAEM_TRAIN_FILE": "my.csv",
        "HHVAEM_TRAIN_TARGET": "outcome",
        "HHVAEM_TRAIN_ARGS": "--steps 3000 --drop id",
    }
    _, calls = run_trainer_command(services, tmp_path, env)
    models, data = tmp_path / "models", tmp_path / "d"
    assert calls == [f"train {data}/my.csv --target outcome --out {models}/mine --steps 3000 --drop id"]
    (models / "mine").mkdir(parents=True)
    (models / "mine" / "manifest.json").write_text("{}")
    (tmp_path / "calls").unlink()
    out, calls = run_trainer_command(services, tmp_path, env)
    assert calls == [] and "model mine already trained; skipping" in out


def test_compose_file_runs_on_compose_v1_and_v2(compose: dict) -> None:
    assert "name" not in compose, "Debian 12's docker-compose 1.29 refuses a top-level name"
    assert "version" not in compose


@pytest.mark.skipif(
    not (shutil.which("docker-compose") or shutil.which("docker")), reason="no docker compose client installed"
)
def test_compose_config_validates(tmp_path: Path) -> None:
    """`docker compose config` (or Debian's docker-compose) accepts the file, with and without a user's table, and
    publishes the API on the loopback interface unless HHVAEM_BIND says otherwise."""
    clients = [["docker", "compose"]] if shutil.which("docker") else []
    clients += [["docker-compose"]] if shutil.which("docker-compose") else []
    usable = [c for c in clients if subprocess.run([*c, "version"], capture_output=True).returncode == 0]
    if not usable:
        pytest.skip("no working compose client (docker compose plugin or docker-compose)")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HHVAEM_", "TORCH_INDEX_URL"))}
    cases = [
        ({}, "127.0.0.1"),
        ({"HHVAEM_TRAIN_FILE": "my.csv", "HHVAEM_TRAIN_TARGET": "y", "HHVAEM_API_PORT": "18000"}, "127.0.0.1"),
        ({"HHVAEM_BIND": "0.0.0.0", "HHVAEM_AUTH_ENABLED": "true"}, "0.0.0.0"),
    ]
    for env, bind in cases:
        out = subprocess.run(
            [*usable[0], "-f", str(ROOT / "docker-compose.yml"), "config"],
            capture_output=True,
            text=True,
            env={**clean, **env},
            cwd=tmp_path,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert "hhvaem demo --train-only" in out.stdout
        port = env.get("HHVAEM_API_PORT", "8000")
        # v1 writes the short syntax, v2 the long one (host_ip, published)
        assert f"{bind}:{port}:8000" in out.stdout or re.search(
            rf"host_ip: {re.escape(bind)}\n\s+target: 8000\n\s+published: \"?{port}\"?", out.stdout
        ), out.stdout
        if "HHVAEM_TRAIN_FILE" in env:
            assert "/data/my.csv" in out.stdout


# ---------------------------------------------------------------------------------------- safe by default
# Issue #23, 9: the stack as it comes must not serve the network unauthenticated, nor let one service take the
# host's memory, CPUs or disk (logs).


def published(spec: str, env: dict[str, str] | None = None) -> tuple[str, str, str]:
    """A short-syntax port `[HOST_IP:]HOST_PORT:CONTAINER_PORT`, interpolated: (host IP, '' for every interface;
    host port; container port)."""
    parts = resolved(spec, env).split(":")
    assert len(parts) in (2, 3), spec
    return ("", *parts) if len(parts) == 2 else tuple(parts)


def test_every_published_port_is_on_loopback_unless_bind_says_otherwise(services: dict) -> None:
    ports = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert {"api", "api-gpu", "lb"} <= set(ports)
    for name, specs in ports.items():
        for spec in specs:
            assert published(spec)[0] == "127.0.0.1", (name, spec)
            assert published(spec, {"HHVAEM_BIND": "0.0.0.0"})[0] == "0.0.0.0", (name, spec)  # a deliberate choice


def test_every_host_port_is_set_by_an_environment_variable(services: dict) -> None:
    variables = {}
    for name, service in services.items():
        for spec in service.get("ports", []):
            m = re.search(r"(?:^|:)\$\{(\w+):-(\d+)\}:\d+$", spec)
            assert m, f"{name}: the host port of {spec!r} is not ${{VARIABLE:-default}}"
            assert published(spec, {m.group(1): "12345"})[1] == "12345"
            variables[name] = m.group(1), m.group(2)
    assert variables == {
        "api": ("HHVAEM_API_PORT", "8000"),
        "api-gpu": ("HHVAEM_GPU_PORT", "8001"),
        "lb": ("HHVAEM_LB_PORT", "8080"),
    }


def test_authentication_can_be_turned_on(services: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """For serving other machines: HHVAEM_AUTH_ENABLED reaches every API container, and the service reads it."""
    from hhvaem.app.core.config import Settings

    for name in ("api", "api-gpu", "api-replica"):
        setting = services[name]["environment"]["HHVAEM_AUTH_ENABLED"]
        assert resolved(setting) == "false"
        monkeypatch.setenv("HHVAEM_AUTH_ENABLED", resolved(setting, {"HHVAEM_AUTH_ENABLED": "true"}))
        assert Settings().auth_enabled


def bytes_of(size: str) -> int:
    """Docker's memory size (`512m`, `2g`, `1.5g`, bytes) in bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmg]?)", size.lower())
    assert m, size
    return int(float(m.group(1)) * 1024 ** "bkmg".index(m.group(2) or "b"))


def test_every_service_has_cpu_and_memory_limits(services: dict) -> None:
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        cpus = resolved(str(service.get("cpus", limits.get("cpus", ""))))
        memory = resolved(str(service.get("mem_limit", limits.get("memory", ""))))
        assert cpus and memory, f"{name} has no CPU or memory limit"
        # Docker refuses a CPU limit above the host's cores: the defaults must start on a 2-core machine.
        assert 0 < float(cpus) <= 2, (name, cpus)
        assert 128 * 1024**2 <= bytes_of(memory) <= 8 * 1024**3, (name, memory)
        variables = re.findall(r"\$\{(\w+):-", f"{service.get('cpus')} {service.get('mem_limit')}")
        assert len(variables) == 2, f"{name}: its limits are not set by environment variables"
    worker = services["ray-worker"]
    assert f"--num-cpus={worker['cpus']}" in worker["command"]  # the Ray worker is told the CPUs it is given


def test_every_service_rotates_its_logs(services: dict) -> None:
    for name, service in services.items():
        logging = service.get("logging")
        assert logging and logging["driver"] == "json-file", name
        options = {k: resolved(str(v)) for k, v in logging["options"].items()}
        assert bytes_of(options["max-size"]) <= 100 * 1024**2 and 1 <= int(options["max-file"]) <= 10, (name, options)


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
    assert "pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}" in trainer
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", dockerfile, re.MULTILINE)
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
