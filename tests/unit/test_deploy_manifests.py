"""The deploy files agree with the code: nothing here can run a container, so everything is read.

* ``deploy/Dockerfile``: non-root, tini, the ``freshet`` entrypoint, ports the CLI uses.
* ``docker-compose.yml``: the compose-spec JSON schema (vendored by check-jsonschema), every
  freshet command parsed by the real click commands, ports and Prometheus targets consistent.
* ``deploy/k8s``: the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields
  fail), the flow as one Bytewax cluster (ids from pod ordinals, addresses from the headless
  service), probes on real routes, HPA on the Deployment, env names the code reads.
* ``deploy/grafana`` + ``deploy/prometheus``: every PromQL expression parses (promql-parser)
  and uses only metric and label names that flows/stream/metrics.py and serving/metrics.py register.

Each check is a function returning problems; the real files must have none, and the tests at
the end show each check catching a wrong command, port or metric name.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib
import inspect
import json
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import click
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from freshet.cli import cli
from freshet.dsl.registry import get_view
from freshet.serving.auth import ApiKeys
from freshet.sinks.clock import parse_time
from freshet.sinks.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "freshet.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests promise to work on (pod-index label)

# Series other exporters provide (redis_exporter in docker-compose.yml) and Prometheus' own.
EXTERNAL_METRICS: dict[str, frozenset[str]] = {
    "up": frozenset(),
    "redis_memory_used_bytes": frozenset(),
    "redis_memory_max_bytes": frozenset(),
    "redis_evicted_keys_total": frozenset({"db"}),
}
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every scraped series
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "${view}": "card_txn",
                     "$view": "card_txn"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# What the code says


def command(name: str) -> click.Command:
    found = cli.get_command(click.Context(cli), name)
    if found is None:
        raise click.UsageError(f"freshet has no command {name!r}")
    return found


def cli_params(args: list[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``freshet ARGS`` parsed by the real click command (nothing runs); raises on a wrong
    command, option or value. ``env`` is what the container's environment adds."""
    name, *rest = args
    parent = click.Context(cli, info_name="freshet")
    with pytest.MonkeyPatch.context() as patch:
        for key in ("BYTEWAX_PROCESS_ID", "BYTEWAX_ADDRESSES"):
            patch.delenv(key, raising=False)
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        ctx = command(name).make_context(name, list(rest), parent=parent)
    return dict(ctx.params)


def option_default(cmd: str, name: str) -> Any:
    for param in command(cmd).params:
        if param.name == name:
            return param.default
    raise AssertionError(f"freshet {cmd} has no option {name!r}")


def option_envvar(cmd: str, name: str) -> str | None:
    for param in command(cmd).params:
        if param.name == name:
            return param.envvar if isinstance(param.envvar, str) else None
    raise AssertionError(f"freshet {cmd} has no option {name!r}")


class _Recording(dict[str, str]):
    def __init__(self, data: Mapping[str, str]) -> None:
        super().__init__(data)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def env_problems(names: Mapping[str, str], where: str) -> list[str]:
    """Names freshet does not read (Settings.from_env, ApiKeys.from_env): plain names it asks for,
    or FRESHET_KAFKA_CONFIG_* that land in the librdkafka pass-through."""
    env = _Recording(dict.fromkeys(names, "x"))
    settings = Settings.from_env(env)
    with contextlib.suppress(ValueError):  # "x" is not a key list; the name was asked for
        ApiKeys.from_env(env)  # the endpoint's own setting
    problems = []
    for name in names:
        if not name.startswith("FRESHET_"):
            continue
        passthrough = name.removeprefix("FRESHET_KAFKA_CONFIG_").lower().replace("_", ".")
        if name not in env.asked and settings.kafka_config.get(passthrough) != "x":
            problems.append(f"{where}: {name} is not read by freshet (sinks/settings.py)")
    return problems


@cache
def registered_metrics() -> dict[str, frozenset[str]]:
    """Every series name the flow and the endpoint expose -> its label names."""
    from prometheus_client import REGISTRY
    from prometheus_client.registry import CollectorRegistry

    flow_metrics = importlib.import_module("freshet.stream.metrics")
    from freshet.serving.metrics import ServingMetrics

    serving = ServingMetrics(["card_txn"])
    from freshet.serving.cache import CachedRedis, CacheSettings

    # The cache's metrics join the endpoint's registry when it is on (FRESHET_CACHE=on).
    CachedRedis("redis://127.0.0.1:1/0", settings=CacheSettings(enabled=True)).bind_metrics(serving)
    # prometheus_client has no public accessor for label names; each metric keeps them here.
    labels: dict[str, tuple[str, ...]] = {}
    for obj in [*vars(flow_metrics).values(), *vars(serving).values()]:
        if hasattr(obj, "_labelnames") and hasattr(obj, "_name"):
            labels[obj._name] = tuple(obj._labelnames)
        elif isinstance(obj, flow_metrics.BatchHistogram):
            labels[obj._name] = ("view",)
    labels["freshet_consumer_lag"] = ("topic", "partition")
    out: dict[str, frozenset[str]] = {}
    registry: CollectorRegistry
    for registry in (REGISTRY, serving.registry):
        for family in registry.collect():
            names = frozenset(labels.get(family.name, ()))
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"),
            }.get(family.type, ("",))
            for suffix in suffixes:
                extra = {"le"} if suffix == "_bucket" else set()
                out[family.name + suffix] = names | extra
    return out


# --------------------------------------------------------------------------------------------
# PromQL


def _substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def promql_problems(expr: str, known: Mapping[str, frozenset[str]]) -> list[str]:
    """Parse errors, unknown metric names, unknown label names in matchers and groupings."""
    try:
        ast = promql_parser.parse(_substitute(expr))
    except ValueError as exc:
        return [f"{expr!r} does not parse: {exc}"]
    selectors: list[Any] = []
    groupings: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            groupings.extend(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                groupings.extend(matching.labels)

    promql_parser.walk(ast, pre_visit=visit)
    problems = []
    available: set[str] = set(TARGET_LABELS)
    for selector in selectors:
        name = selector.name
        if name not in known:
            problems.append(f"unknown metric {name!r} in {expr!r}")
            continue
        available |= known[name]
        for matcher in selector.matchers.matchers:
            if matcher.name not in known[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {matcher.name!r} (in {expr!r})")
    problems += [f"no metric in {expr!r} has label {label!r}" for label in groupings
                 if label not in available]  # fmt: skip
    return problems


def labels_of(expr: str, known: Mapping[str, frozenset[str]]) -> set[str]:
    found: set[str] = set(TARGET_LABELS)

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name in known:
            found.update(known[node.name])

    promql_parser.walk(promql_parser.parse(_substitute(expr)), pre_visit=visit)
    return found


def known_metrics() -> dict[str, frozenset[str]]:
    return {**registered_metrics(), **EXTERNAL_METRICS}


# --------------------------------------------------------------------------------------------
# Files


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_docs() -> dict[str, dict[str, Any]]:
    """``"Kind/name"`` -> manifest, from the files the kustomization lists."""
    kustomization = load_yaml(K8S / "kustomization.yaml")
    docs = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(ROOT / "docker-compose.yml")
    return doc


def dashboard_exprs(board: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]


def alert_rules(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for group in doc["groups"]:
        yield from group["rules"]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


# --------------------------------------------------------------------------------------------
# Checks: Dockerfile


def dockerfile_problems(text: str) -> list[str]:
    stage = final_stage(dockerfile_instructions(text))
    words = dict(stage)
    problems = []
    user = words.get("USER", "root").split(":")[0]
    if user in ("root", "0"):
        problems.append(f"final stage runs as {user!r}: add a non-root USER")
    entrypoint = json.loads(words.get("ENTRYPOINT", "[]"))
    if entrypoint[-1:] != ["freshet"] or "tini" not in entrypoint[:1]:
        problems.append(f"ENTRYPOINT {entrypoint} is not tini running freshet")
    exposed = {int(p.split("/")[0]) for p in words.get("EXPOSE", "").split()}
    wanted = {option_default("serve", "port"), option_default("run", "metrics_port")}
    problems += [f"port {p} of the CLI is not EXPOSEd" for p in sorted(wanted - exposed)]
    for source in copied_paths(text):
        if not (ROOT / source).exists():
            problems.append(f"COPY {source}: no such path")
    if not any(w == "COPY" and a.startswith("--from") for w, a in stage):
        problems.append("the final stage copies nothing from the build stage")
    # The image must copy the folder of every package setuptools is told to ship.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = copied_paths(text)
    for package in packages["packages"]:
        folder = package_folder(package, packages["package-dir"])
        if not any(folder == c or folder.startswith(f"{c}/") for c in copied):
            problems.append(f"package {package!r} ({folder}/) is never copied into the image")
    # pip skips an optional C extension it cannot build: the image build must import each.
    for extension in packages.get("ext-modules", []):
        if f"import {extension['name']}" not in text:
            problems.append(f"the image build never checks C extension {extension['name']!r}")
    return problems


def package_folder(package: str, package_dir: Mapping[str, str]) -> str:
    """The source folder of ``package`` under setuptools' ``package-dir`` mapping."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        head = ".".join(parts[:n])
        if head in package_dir:
            return "/".join([package_dir[head], *parts[n:]])
    return "/".join(parts)


def copied_paths(text: str) -> set[str]:
    """Paths of the build context that any stage COPYs."""
    return {
        source
        for word, args in dockerfile_instructions(text)
        if word == "COPY" and not args.startswith("--from")
        for source in shlex.split(args)[:-1]
    }


# --------------------------------------------------------------------------------------------
# Checks: docker-compose.yml


def _freshet_services(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in doc["services"].items()
        if str(service.get("image", "")).startswith("freshet") and "entrypoint" not in service
    }


def compose_problems(doc: Mapping[str, Any]) -> list[str]:
    problems = []
    services = doc["services"]
    freshet = _freshet_services(doc)
    serve_port = None
    parsed: dict[str, dict[str, Any]] = {}
    for name, service in freshet.items():
        args = service.get("command", [])
        try:
            params = parsed[name] = cli_params(args)
        except click.ClickException as exc:
            problems.append(f"service {name}: `freshet {shlex.join(args)}`: {exc.format_message()}")
            continue
        env = service.get("environment", {})
        problems += env_problems(env, f"service {name}")
        if args[0] == "serve":
            serve_port = params["port"]
            published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
            if str(serve_port) not in published:
                problems.append(f"service {name}: serves on {serve_port}, publishes {published}")
            check = " ".join(service.get("healthcheck", {}).get("test", []))
            if f":{serve_port}/readyz" not in check:
                problems.append(f"service {name}: healthcheck does not ask :{serve_port}/readyz")
        if args[0] == "run":
            for view in params["view_names"]:
                get_view(view)
    targets = {
        job["job_name"]: target
        for job in load_yaml(PROMETHEUS)["scrape_configs"]
        for target in job["static_configs"][0]["targets"]
    }
    for job, target in targets.items():
        host, port = target.rsplit(":", 1)
        if host not in services:
            problems.append(f"prometheus job {job}: no compose service {host!r}")
            continue
        args = services[host].get("command", [])
        if host in parsed and args[0] == "run":
            metrics_port = parsed[host]["metrics_port"]
            if int(port) != metrics_port:
                problems.append(f"prometheus scrapes {target}; the flow serves {metrics_port}")
        if host in parsed and args[0] == "serve" and int(port) != serve_port:
            problems.append(f"prometheus scrapes {target}; the endpoint serves {serve_port}")
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith(".") and not (ROOT / source).exists():
                problems.append(f"volume source {source} does not exist")
    return problems


# --------------------------------------------------------------------------------------------
# Checks: Kubernetes


def schema_problems(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    for key, doc in docs.items():
        try:
            kubernetes_validate.validate(dict(doc), K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{key}: {exc.message} at {'/'.join(map(str, exc.path))}")
    return problems


def _container(doc: Mapping[str, Any]) -> dict[str, Any]:
    containers = doc["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def _env_names(
    container: Mapping[str, Any], docs: Mapping[str, Mapping[str, Any]]
) -> dict[str, str]:
    names: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names.update(docs[f"ConfigMap/{source['configMapRef']['name']}"]["data"])
        if "secretRef" in source:
            names.update(docs[f"Secret/{source['secretRef']['name']}"]["stringData"])
    for item in container.get("env", []):
        names[item["name"]] = item.get("value", "")
    return names


def flow_problems(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    sts = docs["StatefulSet/freshet-flow"]
    spec = sts["spec"]
    container = _container(sts)
    ports = _ports(container)
    env = {item["name"]: item for item in container.get("env", [])}
    id_var, addr_var = option_envvar("run", "process_id"), option_envvar("run", "addresses")
    if id_var not in env or addr_var not in env:
        return [f"flow container sets neither {id_var} nor {addr_var} (freshet run -i/-a)"]
    field = env[id_var].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if field != "metadata.labels['apps.kubernetes.io/pod-index']":
        problems.append(f"{id_var} comes from {field!r}, not the pod ordinal")
    # SIGTERM starts the flow's drain (commit the batch in hand, final snapshot): Kubernetes must
    # wait longer than the drain may take before it sends SIGKILL.
    grace = spec["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    drain = option_default("run", "drain_timeout")
    if not grace > drain:
        problems.append(f"terminationGracePeriodSeconds {grace} <= freshet run's drain {drain} s")
    service = docs.get(f"Service/{spec['serviceName']}")
    if service is None or service["spec"].get("clusterIP") != "None":
        return [*problems, f"serviceName {spec['serviceName']!r} is not a headless Service"]
    if not service["spec"].get("publishNotReadyAddresses"):
        problems.append("the headless service must publish not-ready pods (cluster formation)")
    addresses = env[addr_var]["value"].split(";")
    if len(addresses) != spec["replicas"]:
        problems.append(f"{len(addresses)} addresses for {spec['replicas']} replicas")
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for i, address in enumerate(addresses):
        host, _, port = address.rpartition(":")
        expected = f"{sts['metadata']['name']}-{i}.{spec['serviceName']}"
        if host != expected:
            problems.append(f"address {i} is {host!r}, pod {i} is {expected!r}")
        if int(port) != ports.get("cluster") or int(port) != service_ports.get("cluster"):
            problems.append(
                f"address port {port}, container port {ports.get('cluster')}, "
                f"service port {service_ports.get('cluster')} differ"
            )
    try:
        params = cli_params(container["args"], {id_var: "1", addr_var: env[addr_var]["value"]})
    except click.ClickException as exc:
        return [*problems, f"flow args: {exc.format_message()}"]
    for view in params["view_names"]:
        get_view(view)
    annotations = spec["template"]["metadata"].get("annotations", {})
    metrics = {params["metrics_port"], ports.get("metrics"), service_ports.get("metrics"),
               int(annotations.get("prometheus.io/port", -1))}  # fmt: skip
    if len(metrics) != 1:
        problems.append(f"flow metrics ports disagree: {sorted(map(str, metrics))}")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    offline = _env_names(container, docs).get("FRESHET_OFFLINE_DIR", "")
    for what, path in (("recovery dir", str(params["recovery_dir"])), ("offline dir", offline)):
        mount = next((m for m in mounts if path.startswith(m.rstrip("/") + "/")), None)
        claim = volumes.get(mounts.get(mount or "", ""), {}).get("persistentVolumeClaim")
        if claim is None:
            problems.append(f"{what} {path!r} is not on a persistent volume")
            continue
        pvc = docs.get(f"PersistentVolumeClaim/{claim['claimName']}")
        if pvc is None or "ReadWriteMany" not in pvc["spec"]["accessModes"]:
            problems.append(f"{what}: every flow process needs the same volume (ReadWriteMany)")
    return problems


class _StubRedis:
    async def ping(self) -> bool:
        return True


def _asgi_status(path: str) -> int:
    from freshet.serving.app import FeatureApp
    from freshet.serving.auth import ApiKeys

    view = get_view("card_txn")
    app = FeatureApp(
        layouts={view.name: view.layout()}, views_doc=[], redis_client=_StubRedis(),
        api_keys=ApiKeys.parse(""),
    )  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": []}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    status: int = sent[0]["status"]
    return status


def serve_problems(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    problems = []
    deployment = docs["Deployment/freshet-serve"]
    container = _container(deployment)
    try:
        params = cli_params(container["args"])
    except click.ClickException as exc:
        return [f"serve args: {exc.format_message()}"]
    ports = _ports(container)
    if ports.get("http") != params["port"]:
        problems.append(f"containerPort http {ports.get('http')} != --port {params['port']}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = container.get(probe, {}).get("httpGet", {})
        if http.get("path") != path:
            problems.append(f"{probe} asks {http.get('path')!r}, not {path}")
        elif _asgi_status(http["path"]) != 200:
            problems.append(f"{probe}: the app does not answer {http['path']} with 200")
        if http.get("port") not in ("http", params["port"]):
            problems.append(f"{probe} asks port {http.get('port')!r}")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if int(annotations.get("prometheus.io/port", -1)) != params["port"]:
        problems.append("prometheus.io/port is not the endpoint's port (/metrics is there)")
    hpa = docs["HorizontalPodAutoscaler/freshet-serve"]["spec"]
    target = hpa["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", deployment["metadata"]["name"]):
        problems.append(f"the HPA scales {target['kind']}/{target['name']}")
    if not container.get("resources", {}).get("requests", {}).get("cpu"):
        problems.append("CPU-utilisation autoscaling needs a CPU request")
    return problems


def wiring_problems(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Services select pods and name their ports; env names are read by freshet; secrets
    stay out of the ConfigMap."""
    problems = []
    pods = {
        key: doc for key, doc in docs.items() if key.split("/")[0] in ("StatefulSet", "Deployment")
    }
    for key, service in docs.items():
        if not key.startswith("Service/"):
            continue
        selector = service["spec"]["selector"].items()
        matched = [p for p in pods.values()
                   if selector <= p["spec"]["template"]["metadata"]["labels"].items()]  # fmt: skip
        if not matched:
            problems.append(f"{key} selects no pods")
            continue
        ports = _ports(_container(matched[0]))
        for port in service["spec"]["ports"]:
            if isinstance(port["targetPort"], str) and port["targetPort"] not in ports:
                problems.append(f"{key}: targetPort {port['targetPort']!r} is no container port")
    for key, doc in docs.items():
        if key.startswith("ConfigMap/"):
            problems += env_problems(doc["data"], key)
            leaked = {"FRESHET_REDIS_URL", "FRESHET_API_KEYS"} & set(doc["data"])
            problems += [f"{key} holds the credential {name}" for name in sorted(leaked)]
        if key.startswith("Secret/"):
            problems += env_problems(doc["stringData"], key)
    return problems


def job_problems(job: Mapping[str, Any], docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A one-off Job (deploy/k8s/jobs): a real freshet command, config and the shared volume."""
    container = _container(job)
    try:
        params = cli_params(container["args"])
    except click.ClickException as exc:
        return [f"job args: {exc.format_message()}"]
    problems = env_problems(_env_names(container, docs), f"Job/{job['metadata']['name']}")
    offline = _env_names(container, docs).get("FRESHET_OFFLINE_DIR", "")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mount = next((m for m in mounts if offline.startswith(m.rstrip("/") + "/")), None)
    claim = volumes.get(mounts.get(mount or "", ""), {}).get("persistentVolumeClaim", {})
    if claim.get("claimName") != "freshet-data":
        problems.append(f"the job writes {offline!r} outside the flow's shared volume")
    view = params.get("view_ref") or params.get("view")
    if view is None:
        problems.append(f"job args {container['args']} name no view")
    else:
        get_view(str(view).split("@")[0])
    return problems


def job_files() -> dict[str, dict[str, dict[str, Any]]]:
    """File name -> ``"Kind/name"`` -> manifest, for each file in deploy/k8s/jobs."""
    return {
        p.name: {
            f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(p.read_text())
        }
        for p in sorted((K8S / "jobs").glob("*.yaml"))
    }


def jobs() -> dict[str, dict[str, Any]]:
    """File name -> the Job it holds (one per file, beside what it needs, e.g. a Service)."""
    found = {}
    for name, docs in job_files().items():
        (job,) = [doc for key, doc in docs.items() if key.startswith("Job/")]
        found[name] = job
    return found


def backfill_cluster_problems(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The backfill Job is one Bytewax cluster: an Indexed Job whose pod i is process i
    (completion index), addresses = the pods' names under a headless Service, one per pod."""
    (job,) = [doc for key, doc in docs.items() if key.startswith("Job/")]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = _container(job)
    ports = _ports(container)
    env = {item["name"]: item for item in container.get("env", [])}
    id_var, addr_var = (
        option_envvar("backfill", "process_id"),
        option_envvar("backfill", "addresses"),
    )
    if id_var not in env or addr_var not in env:
        return [f"backfill container sets neither {id_var} nor {addr_var} (-i/-a)"]
    problems = []
    if spec.get("completionMode") != "Indexed":
        problems.append("the backfill Job is not Indexed: its pods have no process ids")
    field = env[id_var].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if field != "metadata.annotations['batch.kubernetes.io/job-completion-index']":
        problems.append(f"{id_var} comes from {field!r}, not the completion index")
    addresses = env[addr_var]["value"].split(";")
    if not len(addresses) == spec.get("completions") == spec.get("parallelism"):
        problems.append(
            f"{len(addresses)} addresses, {spec.get('completions')} completions, "
            f"{spec.get('parallelism')} parallelism: one cluster process per pod, all at once"
        )
    service = docs.get(f"Service/{pod.get('subdomain')}")
    if service is None or service["spec"].get("clusterIP") != "None":
        return [*problems, f"subdomain {pod.get('subdomain')!r} is not a headless Service"]
    if not service["spec"].get("publishNotReadyAddresses"):
        problems.append("the headless service must publish not-ready pods (cluster formation)")
    selector = service["spec"]["selector"].items()
    if not selector <= job["spec"]["template"]["metadata"]["labels"].items():
        problems.append(f"Service/{pod['subdomain']} does not select the backfill pods")
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    for i, address in enumerate(addresses):
        host, _, port = address.rpartition(":")
        expected = f"{job['metadata']['name']}-{i}.{pod['subdomain']}"
        if host != expected:
            problems.append(f"address {i} is {host!r}, pod {i} is {expected!r}")
        if int(port) != ports.get("cluster") or int(port) != service_ports.get("cluster"):
            problems.append(
                f"address port {port}, container port {ports.get('cluster')}, "
                f"service port {service_ports.get('cluster')} differ"
            )
    env_values = {id_var: "1", addr_var: env[addr_var]["value"]}
    try:
        params = cli_params(container["args"], env_values)
    except click.ClickException as exc:
        return [*problems, f"backfill args: {exc.format_message()}"]
    for what in ("from_text", "to_text"):
        text = params.get(what)
        if text is None or parse_time(text, now_ms=0) != parse_time(text, now_ms=86_400_000):
            problems.append(f"--{what[:-5]} {text!r}: every pod must plan the same range")
    annotations = spec["template"]["metadata"].get("annotations", {})
    metrics = {params["metrics_port"], ports.get("metrics"), service_ports.get("metrics"),
               int(annotations.get("prometheus.io/port", -1))}  # fmt: skip
    if len(metrics) != 1:
        problems.append(f"backfill metrics ports disagree: {sorted(map(str, metrics))}")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not grace > 30:  # STOP's drain bound in a cluster member (freshet.cli.backfill)
        problems.append(f"terminationGracePeriodSeconds {grace} <= the backfill's 30 s drain")
    return problems


# --------------------------------------------------------------------------------------------
# Checks: dashboard and alerts


def dashboard_problems(board: Mapping[str, Any]) -> list[str]:
    known = known_metrics()
    problems = []
    for where, expr in dashboard_exprs(board):
        problems += [f"{where}: {p}" for p in promql_problems(expr, known)]
    for variable in board["templating"]["list"]:
        query = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        if query and (match is None or match[2] not in known.get(match[1], ())):
            problems.append(f"variable {variable['name']}: {query!r} names no registered label")
    ids = [p["id"] for p in board["panels"]]
    if len(ids) != len(set(ids)):
        problems.append("panel ids repeat")
    provisioned = load_yaml(ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml")
    uids = {d["uid"] for d in provisioned["datasources"]}
    default = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    if default["current"]["value"] not in uids:
        problems.append(f"default datasource {default['current']['value']!r} is not provisioned")
    return problems


def alert_problems(doc: Mapping[str, Any]) -> list[str]:
    known = known_metrics()
    problems = []
    for rule in alert_rules(doc):
        found = promql_problems(rule["expr"], known)
        problems += [f"alert {rule['alert']}: {p}" for p in found]
        if found:
            continue
        labels = labels_of(rule["expr"], known)
        for text in rule.get("annotations", {}).values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                if label not in labels:
                    problems.append(f"alert {rule['alert']}: annotation uses $labels.{label}")
    return problems


# --------------------------------------------------------------------------------------------
# The real files


def test_the_dockerfile_runs_freshet_as_non_root_and_exposes_the_cli_ports() -> None:
    assert dockerfile_problems((ROOT / "deploy/Dockerfile").read_text()) == []


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    copied = copied_paths((ROOT / "deploy/Dockerfile").read_text())
    assert {"flows", "sinks", "serving", "schemas", "pyproject.toml"} <= copied
    assert not copied & ignored


def test_the_compose_file_matches_the_compose_spec() -> None:
    import check_jsonschema.builtin_schemas.vendor as vendored

    schema = json.loads((Path(vendored.__file__).parent / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert errors == []


def test_compose_commands_ports_targets_and_env_agree_with_the_cli() -> None:
    assert compose_problems(compose()) == []


def test_the_compose_generator_calls_produce_with_its_real_signature() -> None:
    from freshet.ops import generator

    service = compose()["services"]["generator"]
    source = service["command"][0]
    tree = compile(source, "generator", "exec")
    assert tree is not None
    call = re.search(r"produce\((.*?)\)\n", source, re.S)
    assert call is not None
    keywords = set(re.findall(r"(\w+)=", call[1]))
    assert keywords <= set(inspect.signature(generator.produce).parameters)


def test_kubernetes_manifests_match_the_kubernetes_schemas() -> None:
    assert schema_problems(k8s_docs()) == []


def test_every_manifest_is_in_the_kustomization() -> None:
    listed = set(load_yaml(K8S / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_the_flow_statefulset_forms_one_bytewax_cluster() -> None:
    assert flow_problems(k8s_docs()) == []


def test_the_endpoint_deployment_probes_real_routes_and_autoscales() -> None:
    assert serve_problems(k8s_docs()) == []


def test_services_config_and_secrets_are_wired_to_what_freshet_reads() -> None:
    assert wiring_problems(k8s_docs()) == []


def test_one_off_jobs_run_real_commands_on_the_shared_volume() -> None:
    assert jobs()
    docs = k8s_docs()
    for name, job in jobs().items():
        assert schema_problems(job_files()[name]) == []
        assert job_problems(job, docs) == []


def test_the_backfill_job_forms_one_bytewax_cluster_of_indexed_pods() -> None:
    assert backfill_cluster_problems(job_files()["backfill.yaml"]) == []


@pytest.mark.parametrize(
    "change",
    [
        lambda docs: docs["Job/freshet-backfill-card-txn"]["spec"].pop("completionMode"),
        lambda docs: docs["Job/freshet-backfill-card-txn"]["spec"].update(completions=3),
        lambda docs: docs["Service/freshet-backfill"]["spec"].update(clusterIP="10.0.0.1"),
        lambda docs: _container(docs["Job/freshet-backfill-card-txn"])["args"].__setitem__(
            3, "-2h"
        ),
        lambda docs: _container(docs["Job/freshet-backfill-card-txn"])["env"][1].update(
            value="freshet-backfill-card-txn-0.freshet-backfill:2101;x-1.freshet-backfill:2101"
        ),
    ],
    ids=["not-indexed", "pods-vs-addresses", "not-headless", "relative-from", "wrong-address"],
)
def test_backfill_cluster_check_catches_a_job_that_cannot_form_one_cluster(
    change: Callable[[Any], None],
) -> None:
    docs = copy.deepcopy(job_files()["backfill.yaml"])
    change(docs)
    assert backfill_cluster_problems(docs)


def test_job_check_catches_a_wrong_backfill_option() -> None:
    job = copy.deepcopy(jobs()["backfill.yaml"])
    _container(job)["args"] = ["backfill", "card_txn", "--since", "-2h"]
    assert job_problems(job, k8s_docs())


def test_the_dashboard_covers_what_operators_watch() -> None:
    board = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for topic in ("throughput", "lag", "freshness", "dead-letter", "redis write",
                  "parquet write", "lookup latency", "hit rate"):  # fmt: skip
        assert topic in titles
    assert dashboard_problems(board) == []


def test_alert_rules_use_registered_metrics_and_labels() -> None:
    doc = load_yaml(ALERTS)
    assert len(list(alert_rules(doc))) >= 10
    assert alert_problems(doc) == []


def test_prometheus_loads_the_alert_rules_compose_mounts() -> None:
    config = load_yaml(PROMETHEUS)
    mounts = dict(
        v.split(":")[:2][::-1]
        for v in compose()["services"]["prometheus"]["volumes"]
        if v.startswith(".")
    )
    for rule_file in config["rule_files"]:
        assert rule_file in mounts
        assert (ROOT / mounts[rule_file]).resolve() == ALERTS


# --------------------------------------------------------------------------------------------
# The checks catch mistakes


def _mutated(doc: Any, change: Callable[[Any], None]) -> Any:
    copied = copy.deepcopy(doc)
    change(copied)
    return copied


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["services"]["flow"].update(command=["runn", "card_txn"]),
        lambda d: d["services"]["flow"].update(command=["run", "card_txn", "--recovery", "/x"]),
        lambda d: d["services"]["serve"].update(command=["serve", "--port", "8080"]),
        lambda d: d["services"]["flow"].update(
            command=["run", "card_txn", "--metrics-port", "9109"]
        ),
        lambda d: d["services"]["flow"]["environment"].update(FRESHET_REDIS_ADDR="r:6379"),
    ],
    ids=["unknown command", "unknown option", "serve port", "metrics port", "env name"],
)
def test_compose_checks_catch_a_wrong_command_port_or_env_name(
    change: Callable[[Any], None],
) -> None:
    assert compose_problems(_mutated(compose(), change))


def _flow_args(docs: Any) -> list[str]:
    args: list[str] = _container(docs["StatefulSet/freshet-flow"])["args"]
    return args


@pytest.mark.parametrize(
    "change",
    [
        lambda d: _flow_args(d).__setitem__(0, "serve"),
        lambda d: _flow_args(d).__setitem__(-1, "9100"),
        lambda d: d["StatefulSet/freshet-flow"]["spec"].update(replicas=3),
        lambda d: d["Service/freshet-flow"]["spec"]["ports"][0].update(port=2102),
        lambda d: d["PersistentVolumeClaim/freshet-data"]["spec"].update(
            accessModes=["ReadWriteOnce"]
        ),
    ],
    ids=["wrong command", "metrics port", "replicas vs addresses", "cluster port", "volume mode"],
)
def test_flow_checks_catch_a_wrong_command_port_or_cluster(change: Callable[[Any], None]) -> None:
    assert flow_problems(_mutated(k8s_docs(), change))


@pytest.mark.parametrize(
    "change",
    [
        lambda d: _container(d["Deployment/freshet-serve"]).update(
            args=["serve", "--port", "8080"]
        ),
        lambda d: _container(d["Deployment/freshet-serve"])["readinessProbe"]["httpGet"].update(
            path="/ready"
        ),
        lambda d: _container(d["Deployment/freshet-serve"]).update(args=["server"]),
        lambda d: d["HorizontalPodAutoscaler/freshet-serve"]["spec"]["scaleTargetRef"].update(
            name="x"
        ),
    ],
    ids=["port", "probe path", "command", "hpa target"],
)
def test_serve_checks_catch_a_wrong_port_probe_or_command(change: Callable[[Any], None]) -> None:
    assert serve_problems(_mutated(k8s_docs(), change))


def test_schema_check_catches_a_misspelt_field() -> None:
    docs = k8s_docs()
    _container(docs["Deployment/freshet-serve"])["readinesProbe"] = {}
    assert schema_problems({"Deployment/freshet-serve": docs["Deployment/freshet-serve"]})


def test_wiring_check_catches_an_env_name_freshet_does_not_read() -> None:
    docs = _mutated(
        k8s_docs(), lambda d: d["ConfigMap/freshet-config"]["data"].update(FRESHET_REDIS="x")
    )
    assert wiring_problems(docs) == [
        "ConfigMap/freshet-config: FRESHET_REDIS is not read by freshet (sinks/settings.py)"
    ]


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("sum(rate(freshet_event_in_total[5m]))", "unknown metric 'freshet_event_in_total'"),
        ("sum by (vew) (rate(freshet_events_in_total[5m]))", "label 'vew'"),
        ('rate(freshet_lookups_total{outcome="hit"}[5m])', "has no label 'outcome'"),
        ("rate(freshet_events_in_total[5m]", "does not parse"),
        ("freshet_http_request_seconds", "unknown metric"),  # a histogram has no bare series
    ],
)
def test_promql_check_catches_wrong_metric_and_label_names(expr: str, words: str) -> None:
    problems = promql_problems(expr, known_metrics())
    assert any(words in p for p in problems), problems


def test_dashboard_check_catches_a_wrong_metric_name() -> None:
    board = json.loads(DASHBOARD.read_text())
    board["panels"][1]["targets"][0]["expr"] = "sum(rate(freshet_rows_emited_total[5m]))"
    assert dashboard_problems(board)


def test_dockerfile_check_catches_root_a_wrong_entrypoint_and_a_missing_port() -> None:
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert dockerfile_problems(text.replace("USER 10001:10001", "USER root"))
    assert dockerfile_problems(text.replace('"tini", "--", "freshet"', '"tini", "--", "fresh"'))
    assert dockerfile_problems(text.replace("EXPOSE 8000 9108 2101", "EXPOSE 8080 9108"))
    assert dockerfile_problems(text.replace("COPY schemas schemas\n", ""))  # a package left out
    unchecked = text.replace("import freshet.engine._faststate", "pass")
    assert dockerfile_problems(unchecked)  # a C extension not checked
