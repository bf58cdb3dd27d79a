"""The scaling-out recipe of docker-compose.yml (issue #13), checked by reading it (no Docker daemon runs here):
stateless API replicas behind nginx, on the same Redis, PostgreSQL and volumes; a Ray head and workers from the
same image (the serving image with the `ray` extra), one cluster token, the shared volumes at the same paths."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_the_default_stack_is_unchanged_and_the_new_services_are_opt_in(services: dict) -> None:
    assert "profiles" not in services["api"] and services["api"]["image"] == "hhvaem:cpu"
    assert services["api-replica"]["profiles"] == ["scale"] and services["lb"]["profiles"] == ["scale"]
    assert services["ray-head"]["profiles"] == ["ray"] and services["ray-worker"]["profiles"] == ["ray"]


def test_replicas_share_the_state_and_sit_behind_the_load_balancer(services: dict) -> None:
    api, replica, lb = services["api"], services["api-replica"], services["lb"]
    for key in ("HHVAEM_DATABASE_URL", "HHVAEM_REDIS_URL", "HHVAEM_MODELS_DIR"):
        assert replica["environment"][key] == api["environment"][key]  # one database, one Redis for all
    assert replica["volumes"] == api["volumes"]  # the data directory (batch files) and models, shared
    assert "ports" not in replica  # reached through the load balancer only
    assert replica["deploy"]["replicas"] == "${HHVAEM_API_REPLICAS:-3}"
    assert replica["healthcheck"] == api["healthcheck"] and replica["depends_on"] == api["depends_on"]
    assert lb["ports"] == ["${HHVAEM_BIND:-127.0.0.1}:${HHVAEM_LB_PORT:-8080}:8080"]  # loopback by default
    assert lb["depends_on"] == {"api-replica": {"condition": "service_healthy"}}
    mount = "./deploy/nginx.conf:/etc/nginx/conf.d/default.conf:ro"
    assert lb["volumes"] == [mount]
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"upstream hhvaem_api \{\s*server api-replica:8000\b", conf)
    assert "listen 8080;" in conf and "proxy_pass http://hhvaem_api;" in conf
    from hhvaem.app.core.config import Settings

    limit = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1)) * 1024 * 1024
    assert limit >= Settings.model_fields["max_upload_bytes"].default  # uploads the service accepts get through


def test_the_ray_cluster_is_one_image_one_token_and_the_same_volumes(services: dict) -> None:
    head, worker, replica = services["ray-head"], services["ray-worker"], services["api-replica"]
    assert head["build"]["args"]["EXTRAS"] == "ray" and replica["build"] == head["build"]
    assert head["image"] == worker["image"] == replica["image"] == "hhvaem:ray"  # one Ray and Python version
    assert head["entrypoint"] == worker["entrypoint"] == ["ray"]
    assert head["command"][:3] == ["start", "--head", "--port=6379"] and "--block" in head["command"]
    assert "--num-cpus=0" in head["command"]  # the head schedules; workers score
    assert "--address=ray-head:6379" in worker["command"] and "--block" in worker["command"]
    assert worker["depends_on"] == {"ray-head": {"condition": "service_healthy"}}
    assert "ray" in head["healthcheck"]["test"] and "status" in head["healthcheck"]["test"]
    # The API replicas are Ray Client drivers (not nodes): the head runs the client server they connect to.
    assert "--ray-client-server-port=10001" in head["command"]
    assert worker["healthcheck"]["test"][1:3] == ["ray", "status"]  # not the image's HTTP check: no API there
    token = {k: v for k, v in head["environment"].items() if k.startswith("RAY_AUTH")}
    assert token == {k: v for k, v in worker["environment"].items() if k.startswith("RAY_AUTH")}
    assert token == {k: v for k, v in replica["environment"].items() if k.startswith("RAY_AUTH")}
    assert token["RAY_AUTH_MODE"] == "token"
    assert head["volumes"] == worker["volumes"] == replica["volumes"]  # same paths on every node
    assert replica["environment"]["HHVAEM_RAY_ADDRESS"] == "${HHVAEM_RAY_ADDRESS:-}"
    for node in (head, worker):
        assert node["shm_size"]  # Ray's object store lives in /dev/shm


def test_the_image_gets_ray_only_when_asked(services: dict) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in dockerfile
    assert '"$(ls /wheels/hhvaem-*.whl)${EXTRAS:+[$EXTRAS]}"' in dockerfile
    assert "EXTRAS" not in str(services["api"]["build"])  # the default serving image stays without Ray
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("ray[data,client]") for r in extras["ray"])  # client: API replicas join by ray://
    assert "hhvaem[ray]" in extras["dev"]  # installed by `make` / .ci/run, so CI runs the Ray tests
