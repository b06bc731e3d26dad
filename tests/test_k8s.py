"""deploy/k8s checked against the code it runs, as tests/test_compose.py checks compose.yaml.

Every container command and exec probe must be a real invocation of the nachbar CLI, every
gRPC probe must ask the port the command serves, every environment variable must be a flag twin
of the tier that reads it, and the Services must select the Deployments and reach their ports.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from nachbar.server.config import ai_parser, db_parser
from tests.test_compose import parse_cli, parse_server_command, server_env_names

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
TIERS = {"nachbar-db": "db", "nachbar-ai": "ai"}


def documents() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: {doc}"
                out.append(doc)
    return out


def find(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"deploy/k8s has {len(found)} {kind} named {name!r}"
    return found[0]


def container(deployment: str) -> dict[str, Any]:
    containers = find("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    body: dict[str, Any] = containers[0]
    return body


def env_of(deployment: str) -> dict[str, str]:
    """The environment a tier's container gets from its ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    for source in container(deployment).get("envFrom", []):
        if "configMapRef" in source:
            env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(find("Secret", source["secretRef"]["name"])["stringData"])
    for item in container(deployment).get("env", []):
        env[item["name"]] = item["value"]
    return env


def config_of(deployment: str) -> argparse.Namespace:
    """The tier's flags as its parser reads them: the command's, over the environment's."""
    kind, _ = parse_server_command(container(deployment)["command"])
    assert kind == TIERS[deployment]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env_of(deployment).items():
            patch.setenv(key, value)
        parser = db_parser() if kind == "db" else ai_parser()  # defaults read the environment
        return parser.parse_args(container(deployment)["command"][3:])


@pytest.mark.parametrize("deployment", TIERS)
def test_commands_and_environment_are_real_flags(deployment: str) -> None:
    kind = TIERS[deployment]
    unknown = set(env_of(deployment)) - server_env_names(kind)
    assert not unknown, f"{deployment} sets {unknown}, which nachbar-{kind} does not read"
    config = config_of(deployment)
    assert config.host == "0.0.0.0"
    port = container(deployment)["ports"][0]["containerPort"]
    assert config.port == port


def test_db_tier_is_stateless_on_milvus_and_replicated() -> None:
    config = config_of("nachbar-db")
    assert config.engine == "milvus"
    assert config.milvus_uri == "http://milvus:19530"
    milvus = find("Service", "milvus")
    assert milvus["spec"]["ports"][0]["port"] == 19530
    spec = find("Deployment", "nachbar-db")["spec"]
    assert spec["replicas"] >= 2
    assert "volumes" not in spec["template"]["spec"], "a Milvus-engine nachbar-db keeps no state"
    # The token comes from a Secret, never from the ConfigMap.
    assert "NACHBAR_MILVUS_TOKEN" in find("Secret", "nachbar-milvus")["stringData"]
    assert "NACHBAR_MILVUS_TOKEN" not in find("ConfigMap", "nachbar-db")["data"]


def test_ai_tier_balances_over_the_db_replicas() -> None:
    config = config_of("nachbar-ai")
    assert find("Deployment", "nachbar-ai")["spec"]["replicas"] >= 2
    headless = find("Service", "nachbar-db-replicas")
    assert headless["spec"]["clusterIP"] == "None"
    assert config.db_host == "dns:///nachbar-db-replicas"
    assert config.db_port == headless["spec"]["ports"][0]["port"] == config_of("nachbar-db").port


@pytest.mark.parametrize("deployment", TIERS)
def test_probes_ask_the_served_health_service(deployment: str) -> None:
    kind = TIERS[deployment]
    body = container(deployment)
    port = config_of(deployment).port
    probes = {k: body[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in body}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for name, probe in probes.items():
        if "grpc" in probe:
            assert probe["grpc"]["port"] == port, name
        else:
            args = parse_cli(probe["exec"]["command"])
            assert (args.command, args.service) == ("ping", kind), name
            assert getattr(args, kind) == f"127.0.0.1:{port}", name


@pytest.mark.parametrize("deployment", TIERS)
def test_services_select_the_deployment_and_reach_its_port(deployment: str) -> None:
    labels = find("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    selector = find("Deployment", deployment)["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    for service_name in (deployment, f"{deployment}-replicas"):
        spec = find("Service", service_name)["spec"]
        assert spec["selector"].items() <= labels.items()
        port = spec["ports"][0]
        assert port["targetPort"] == container(deployment)["ports"][0]["name"]
        assert port["port"] == config_of(deployment).port
