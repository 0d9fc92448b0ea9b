"""The container image and the Compose file, without a Docker engine: the
Dockerfile's install steps (deploy/install.sh) run into a fresh virtual
environment, and `aos serve` starts from it with the image's settings and
passes the image's own health check."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import yaml

from service.settings import Settings

from ..support import free_port
from .tools import ROOT

DOCKERFILE = ROOT / "Dockerfile"
INSTALL = ROOT / "deploy" / "install.sh"
COMPOSE = ROOT / "docker-compose.yml"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def stage(name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage."""
    current, out = None, []
    for keyword, rest in instructions():
        if keyword == "FROM":
            current = rest.split(" AS ")[-1].strip()
        elif current == name:
            out.append((keyword, rest))
    return out


def image_env() -> dict[str, str]:
    env = {}
    for keyword, rest in stage("runtime"):
        if keyword == "ENV":
            for item in shlex.split(rest):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def exec_form(rest: str) -> list[str]:
    parsed: list[str] = json.loads(rest)
    return parsed


def test_dockerfile_shape() -> None:
    builder, runtime = stage("builder"), stage("runtime")
    assert builder and runtime
    # the runtime stage gets the virtual environment only: no compiler, no source
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies == ["--from=builder /opt/aos /opt/aos"]
    # the builder installs with deploy/install.sh, nothing else
    runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "aos-install wheels /src /wheels" in runs and "aos-install venv /opt/aos /wheels" in runs
    assert ("COPY", "deploy/install.sh /usr/local/bin/aos-install") in builder
    # every package of the distribution is copied into the build
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"][
        "targets"
    ]["wheel"]["packages"]
    for package in packages:
        assert ("COPY", f"{package} ./{package}") in builder
    # non-root, numeric (runAsNonRoot can check it), matching the chart's user
    (user,) = [rest for keyword, rest in runtime if keyword == "USER"]
    uid, gid = user.split(":")
    assert int(uid) == int(gid) == 10001
    # `aos serve` by default, `aos migrate` as `docker run IMAGE migrate`
    (entrypoint,) = [exec_form(rest) for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    (cmd,) = [exec_form(rest) for keyword, rest in runtime if keyword == "CMD"]
    assert entrypoint + cmd == ["aos", "serve"]
    (healthcheck,) = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    env = image_env()
    assert env["AOS_HOST"] == "0.0.0.0"
    assert env["AOS_STORAGE_URL"] == "sqlite:////data/aos.db"
    assert env["AOS_ADMIN_TOKEN_FILE"].startswith("/data/")
    assert ("VOLUME", '["/data"]') in runtime and ("WORKDIR", "/data") in runtime
    assert ("EXPOSE", env["AOS_PORT"]) in runtime


def healthcheck_command() -> list[str]:
    (healthcheck,) = [rest for keyword, rest in stage("runtime") if keyword == "HEALTHCHECK"]
    command = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    return command


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_install_steps_then_serve(tmp_path: Path) -> None:
    """deploy/install.sh, as the Dockerfile runs it (with the default AOS_EXTRAS:
    every store's driver), then `aos serve` from the new environment, configured
    as the image configures it."""
    wheels, venv, data = tmp_path / "wheels", tmp_path / "opt-aos", tmp_path / "data"
    data.mkdir()
    (arg,) = [rest for keyword, rest in stage("builder") if keyword == "ARG"]
    extras = arg.removeprefix("AOS_EXTRAS=")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AOS_", "VIRTUAL_ENV"))},
        "AOS_EXTRAS": extras,
        "PYTHON": sys.executable,
    }
    # the build context as the builder stage sees it: only what it copies into /src
    src = tmp_path / "src"
    src.mkdir()
    for keyword, rest in stage("builder"):
        if keyword == "COPY" and not rest.startswith("--") and "/usr/local/bin/" not in rest:
            *sources, target = rest.split()
            for source in sources:
                if target.endswith("/"):
                    shutil.copy(ROOT / source, src / source)
                else:
                    shutil.copytree(ROOT / source, src / target.removeprefix("./"))
    for step in (["wheels", str(src), str(wheels)], ["venv", str(venv), str(wheels)]):
        done = subprocess.run(
            ["sh", str(INSTALL), *step], env=env, capture_output=True, text=True, timeout=800
        )
        assert done.returncode == 0, f"install.sh {step[0]} failed:\n{done.stderr[-5000:]}"
    assert (venv / "bin" / "aos").exists()
    # the project and every driver of the extras came from the wheelhouse
    built = {path.name.split("-")[0].lower() for path in wheels.glob("*.whl")}
    assert {"async_output_service", "asyncpg", "aiomysql", "cassandra_driver", "pymongo"} <= built

    port = free_port()
    image = image_env()
    serve_env = {
        **{k: v for k, v in env.items() if k not in ("AOS_EXTRAS", "PYTHON")},
        **image,
        # the image's paths, moved under the test's directory; a port of our own
        "PATH": f"{venv / 'bin'}:{env['PATH']}",
        "AOS_HOST": "127.0.0.1",
        "AOS_PORT": str(port),
        "AOS_STORAGE_URL": image["AOS_STORAGE_URL"].replace("/data/", f"{data}/"),
        "AOS_ADMIN_TOKEN_FILE": image["AOS_ADMIN_TOKEN_FILE"].replace("/data/", f"{data}/"),
    }
    Settings.from_env(serve_env)  # the image's settings are valid
    (cmd,) = [exec_form(rest) for keyword, rest in stage("runtime") if keyword == "CMD"]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(venv / "bin" / "aos"), *cmd], cwd=data, env=serve_env, stdout=out, stderr=out
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"aos serve exited:\n{log.read_text()}"
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{log.read_text()}"
            time.sleep(0.1)
        assert httpx.get(f"{base}/healthz").status_code == 200
        # the image's HEALTHCHECK, run with the environment's python
        check = healthcheck_command()
        done = subprocess.run(check, env=serve_env, capture_output=True, timeout=10)
        assert done.returncode == 0, done.stderr
        # the database and the generated admin token went where the image keeps its data
        assert (data / "aos.db").exists() and (data / ".aos-admin-token").exists()
        # compiled at install: nothing to write at run time (read-only root filesystem)
        version = f"{sys.version_info.major}{sys.version_info.minor}"
        site = next((venv / "lib").glob("python3*/site-packages"))
        assert (site / "service" / "__pycache__" / f"app.cpython-{version}.pyc").exists()
    finally:
        process.terminate()
        process.wait(15)
    # `docker run IMAGE migrate`
    done = subprocess.run(
        [str(venv / "bin" / "aos"), "migrate"], env=serve_env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def compose() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with the defaults."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_is_a_two_node_cluster_on_postgresql() -> None:
    services = compose()["services"]
    assert isinstance(services, dict)
    assert set(services) == {"postgres", "aos-1", "aos-2"}
    assert services["postgres"]["image"].startswith("postgres:")
    assert "healthcheck" in services["postgres"]
    nodes = {name: spec for name, spec in services.items() if name.startswith("aos-")}
    host_ports = set()
    for name, spec in nodes.items():
        assert spec["build"] == "." and spec["read_only"] is True
        assert spec["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(spec["healthcheck"]["test"])
        env = {k: interpolate(str(v)) for k, v in spec["environment"].items()}
        settings = Settings.from_env(env)
        assert settings.node_id == name
        assert (
            settings.storage_url.startswith("postgresql://")
            and "@postgres:5432/" in env["AOS_STORAGE_URL"]
        )
        assert {m.id: m.url for m in settings.peers} == {n: f"http://{n}:8080" for n in nodes}
        assert settings.cluster_secret and settings.admin_token
        (mapping,) = spec["ports"]
        host_ports.add(mapping.rsplit(":", 2)[1])
        assert mapping.endswith(":8080")
    assert len(host_ports) == len(nodes)
