"""deploy/ agrees with the code: settings, routes, commands, images, Kubernetes and compose wiring.

Docker cannot run here, so these tests parse deploy/ and hold it against the application itself:
every variable set is a real setting, every probed path a real route, every command a real subcommand.
Each check is a function returning a list of problems; `test_check_bites` feeds each family a broken
snippet, so a check that could never fail would be caught too.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from service.cli.entry import build_parser
from service.sandbox.app import create_sandbox_app
from service.sandbox.config import ENV_PREFIX as SANDBOX_PREFIX
from service.sandbox.config import SandboxConfig
from service.settings import ENV_PREFIX, FOREIGN_VARIABLES, Settings, SettingsError, load_settings
from service.web.app import create_app, create_worker_app
from tests.conftest import TEST_SECRET, make_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "k8s"
RELAY = "codat-relay"
# Not settings, but needed by the image itself (venv on PATH, no .pyc on a read-only filesystem).
IMAGE_RUNTIME_VARIABLES = frozenset({"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"})
# Variables deploy/compose.yaml interpolates that belong to compose or the postgres image, not the app.
COMPOSE_ONLY_VARIABLES = frozenset({"POSTGRES_PASSWORD", "CODAT_RELAY_IMAGE"})
SECRET_NAME_PATTERNS = (r"RELAY_.*TOKEN", r".*_SECRETS?", r".*_API_KEY", r".*PASSWORD", r"RELAY_DATABASE_URL")
# service.cli gives uvicorn this many seconds beyond RELAY_SHUTDOWN_GRACE_SECONDS to close connections.
UVICORN_EXTRA_GRACE_S = 5
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a container must listen beyond its own loopback
TMP = "/tmp"  # noqa: S108 - the emptyDir mount path we check for, not a file we write
Problems = list[str]


# ---------------------------------------------------------------- loading


def yaml_docs(text: str) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [doc for doc in yaml_docs(path.read_text()) if doc.get("kind") != "Kustomization"]
    return docs


def compose_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def dockerfile_text() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions(text):
        if word == "ENV":
            parts = shlex.split(rest)
            if parts and "=" not in parts[0]:  # legacy `ENV NAME value`
                env[parts[0]] = " ".join(parts[1:])
            else:
                env.update(part.split("=", 1) for part in parts)
    return env


def exec_form(rest: str) -> list[str]:
    return [str(w) for w in yaml.safe_load(rest)] if rest.startswith("[") else shlex.split(rest)


def image_argv(text: str) -> tuple[list[str], list[str]]:
    """The final stage's ENTRYPOINT and CMD."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for word, rest in dockerfile_instructions(text):
        if word == "FROM":
            entrypoint, cmd = [], []
        elif word == "ENTRYPOINT":
            entrypoint = exec_form(rest)
        elif word == "CMD":
            cmd = exec_form(rest)
    return entrypoint, cmd


def pod_specs(docs: Iterable[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every Deployment and Job."""
    for doc in docs:
        if doc.get("kind") in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
            yield doc, doc["spec"]["template"]


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def k8s_argv(container: dict[str, Any], image: tuple[list[str], list[str]]) -> list[str]:
    """Kubernetes' rule: `command` replaces ENTRYPOINT, `args` replaces CMD, and `command` alone drops CMD."""
    entrypoint, cmd = image
    if "command" in container:
        return [*container["command"], *container.get("args", [])]
    return [*entrypoint, *container.get("args", cmd)]


def relay_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run the codat-relay image (built from deploy/Dockerfile)."""
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def compose_argv(service: dict[str, Any], image: tuple[list[str], list[str]]) -> list[str]:
    def words(value: str | list[str]) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]

    entrypoint = words(service["entrypoint"]) if "entrypoint" in service else image[0]
    return [*entrypoint, *(words(service["command"]) if "command" in service else image[1])]


INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def interpolate(value: str, sample: dict[str, str]) -> str:
    """What compose would substitute, with `sample` standing in for deploy/.env."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.groups()
        # A required value stands in for a real secret, so it is as long as settings demand of a token.
        # Distinct per variable: two roles given one token is refused at start-up.
        return sample.get(name) or (arg if op == "-" else f"example-value-{name.lower()}")

    return INTERPOLATION.sub(one, value)


def env_example_keys(text: str) -> dict[str, str]:
    """KEY=value lines of .env.example, commented-out optional ones included (value "" then)."""
    keys = {}
    for line in text.splitlines():
        if m := re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(\S*)", line):
            keys[m.group(2)] = "" if m.group(1) else m.group(3)
    return keys


def http_paths(text: str) -> list[str]:
    return re.findall(r"https?://[^/\s'\"]+(/[\w\-./{}]*)", text)


def is_secret(name: str) -> bool:
    field = Settings.model_fields.get(name.removeprefix(ENV_PREFIX).lower())
    secret_typed = field is not None and "SecretStr" in str(field.annotation)
    return secret_typed or any(re.fullmatch(p, name) for p in SECRET_NAME_PATTERNS)


def grace_seconds(configmap_data: dict[str, str]) -> float:
    default = Settings.model_fields["shutdown_grace_seconds"].default
    return float(configmap_data.get("RELAY_SHUTDOWN_GRACE_SECONDS", default))


def seconds(value: str | int) -> float:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert m and value, f"unreadable duration {value!r}"
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


# ---------------------------------------------------------------- the application's truth


@pytest.fixture(scope="module")
def relay_routes() -> set[str]:
    app = create_app(make_settings())  # built, never started: the routes are all we read
    return {route.path for route in app.routes if hasattr(route, "path")}


@pytest.fixture(scope="module")
def worker_routes() -> set[str]:
    """`codat-relay worker` serves health and metrics only: its probes must be among these."""
    app = create_worker_app(make_settings())
    return {route.path for route in app.routes if hasattr(route, "path")}


@pytest.fixture(scope="module")
def sandbox_routes() -> set[str]:
    return {route.path for route in create_sandbox_app(SandboxConfig()).routes if hasattr(route, "path")}


# ---------------------------------------------------------------- check families


def env_name_problems(names: Iterable[str], allowed: frozenset[str] = frozenset()) -> Problems:
    problems = []
    sandbox_fields = set(SandboxConfig.__dataclass_fields__)
    for name in names:
        if name in allowed:
            continue
        if name.startswith(ENV_PREFIX) and name not in FOREIGN_VARIABLES:
            ok = name.removeprefix(ENV_PREFIX).lower() in Settings.model_fields
        elif name.startswith(SANDBOX_PREFIX):
            ok = name.removeprefix(SANDBOX_PREFIX).lower() in sandbox_fields
        else:
            ok = False
        if not ok:
            problems.append(f"{name} is neither a RELAY_ setting nor a {SANDBOX_PREFIX} variable")
    return problems


def k8s_env_names(docs: list[dict[str, Any]]) -> list[str]:
    names = []
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            names += list(doc.get("data", {}))
        if doc["kind"] == "Secret":
            names += [*doc.get("stringData", {}), *doc.get("data", {})]
    for _, template in pod_specs(docs):
        names += [e["name"] for c in containers(template) for e in c.get("env", [])]
    return names


def path_problems(paths: Iterable[str], routes: set[str]) -> Problems:
    return [f"{path} is not a route of the app" for path in paths if path not in routes]


def k8s_http_paths(docs: list[dict[str, Any]], image: tuple[list[str], list[str]]) -> list[tuple[str, str]]:
    """(subcommand, path) of every probe and scrape annotation, so each is checked against its own app."""
    paths = []
    for _, template in pod_specs(docs):
        roles = [k8s_argv(c, image)[1] for c in template["spec"]["containers"]]
        if path := template.get("metadata", {}).get("annotations", {}).get("prometheus.io/path"):
            paths += [(role, path) for role in roles]
        for c in containers(template):
            role = k8s_argv(c, image)[1]
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "httpGet" in c.get(probe, {}):
                    paths.append((role, c[probe]["httpGet"]["path"]))
                paths += [(role, p) for p in http_paths(" ".join(c.get(probe, {}).get("exec", {}).get("command", [])))]
    return paths


def role_path_problems(paths: Iterable[tuple[str, str]], routes: dict[str, set[str]]) -> Problems:
    """Each (subcommand, path) must be a route of the app that subcommand serves."""
    return [f"{path} is not a route of `{role}`" for role, path in paths if path not in routes.get(role, set())]


def command_problems(argv: list[str]) -> Problems:
    if argv[:1] != [RELAY]:
        return [f"{argv} does not run {RELAY}"]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            build_parser().parse_args(argv[1:])
    except SystemExit:
        return [f"{shlex.join(argv)} is not a valid {RELAY} command: {err.getvalue().strip()}"]
    return []


def dockerfile_problems(text: str) -> Problems:
    steps = dockerfile_instructions(text)
    froms = [rest for word, rest in steps if word == "FROM"]
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM") :] if froms else []
    users = [rest for word, rest in final if word == "USER"]
    problems = []
    if len(froms) < 2:
        problems.append("not multi-stage")
    if not froms or not froms[-1].startswith("python:3.11-slim"):
        problems.append("final stage is not python:3.11-slim")
    if any("--from" not in rest for word, rest in final if word in {"COPY", "ADD"}):
        problems.append("final stage copies more than the builder's venv")
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        problems.append("final stage does not switch to a non-root USER")
    if ("WORKDIR", "/app") not in final:
        problems.append("WORKDIR is not /app")
    if not any(word == "EXPOSE" and "8000" in rest.split() for word, rest in final):
        problems.append("EXPOSE 8000 missing")
    if not any(word == "HEALTHCHECK" and http_paths(rest) == ["/healthz"] for word, rest in final):
        problems.append("no HEALTHCHECK on /healthz")
    if dockerfile_env(text).get("RELAY_HOST") != ALL_INTERFACES:
        problems.append("RELAY_HOST is not 0.0.0.0: the container would listen on loopback only")
    if image_argv(text) != ([RELAY], ["serve"]):
        problems.append(f'ENTRYPOINT/CMD are not ["{RELAY}"] / ["serve"]')
    return problems


def ignore_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(out)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders wins."""
    prefixes = ["/".join(path.split("/")[: i + 1]) for i in range(path.count("/") + 1)]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(ignore_regex(pattern.lstrip("!")).fullmatch(p) for p in prefixes):
            result = not negated
    return result


def dockerignore_problems(ignore_text: str, dockerfile: str) -> Problems:
    patterns = [p.strip() for p in ignore_text.splitlines() if p.strip() and not p.startswith("#")]
    copied = [
        src
        for word, rest in dockerfile_instructions(dockerfile)
        if word in {"COPY", "ADD"} and "--from" not in rest
        for src in shlex.split(rest)[:-1]
    ]
    problems = [f"{src} is copied but ignored" for src in copied if ignored(src.rstrip("/"), patterns)]
    for leak in (".relay-local.env", "deploy/.env", "codat-relay.db", ".git/config", ".venv/bin/python"):
        if not ignored(leak, patterns):
            problems.append(f"{leak} would be sent to the build")
    return problems


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def secret_ref_problems(docs: list[dict[str, Any]]) -> Problems:
    problems = []
    secret_names = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            problems += [f"secret {k} in ConfigMap" for k in doc.get("data", {}) if is_secret(k)]
    for workload, template in pod_specs(docs):
        where = workload["metadata"]["name"]
        for c in containers(template):
            for env in c.get("env", []):
                if is_secret(env["name"]) and "secretKeyRef" not in env.get("valueFrom", {}):
                    problems.append(f"{where}: {env['name']} is not read from a Secret")
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            refs += [
                e["valueFrom"]["secretKeyRef"]["name"]
                for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
            if not refs:
                problems.append(f"{where}: reads no Secret")
            problems += [f"{where}: unknown Secret {r}" for r in refs if r not in secret_names]
    return problems


def workload_problems(docs: list[dict[str, Any]], image: tuple[list[str], list[str]]) -> Problems:
    problems = []
    configmap = next((d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"), {})
    grace = grace_seconds(configmap)
    for workload, template in pod_specs(docs):
        where, spec = workload["metadata"]["name"], template["spec"]
        pod_sc = spec.get("securityContext", {})
        tmp_volumes = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        if workload["kind"] == "Deployment" and not selects(
            workload["spec"]["selector"].get("matchLabels", {}), template["metadata"].get("labels", {})
        ):
            problems.append(f"{where}: selector does not match its pod labels")
        for c in containers(template):
            sc = {**pod_sc, **c.get("securityContext", {})}
            if not sc.get("runAsNonRoot") or sc.get("runAsUser") == 0:
                problems.append(f"{where}/{c['name']}: may run as root")
            if not sc.get("readOnlyRootFilesystem"):
                problems.append(f"{where}/{c['name']}: root filesystem is writable")
            if not any(m["mountPath"] == TMP and m["name"] in tmp_volumes for m in c.get("volumeMounts", [])):
                problems.append(f"{where}/{c['name']}: no emptyDir on /tmp")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(kind, {})):
                    problems.append(f"{where}/{c['name']}: resources.{kind} lacks cpu or memory")
            role = k8s_argv(c, image)[1:2]
            period = spec.get("terminationGracePeriodSeconds", 30)
            if role == ["web"]:
                if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                    problems.append(f"{where}: web readiness probe is not /readyz")
                if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    problems.append(f"{where}: web liveness probe is not /healthz")
                if period <= grace + UVICORN_EXTRA_GRACE_S:
                    problems.append(f"{where}: terminationGracePeriodSeconds {period} cuts uvicorn's shutdown")
            if role == ["worker"]:
                if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
                    problems.append(f"{where}: worker readiness probe is not /readyz")
                if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
                    problems.append(f"{where}: worker liveness probe is not /healthz")
                if period <= grace:
                    problems.append(f"{where}: terminationGracePeriodSeconds {period} <= shutdown grace {grace}")
    return problems


def topology_problems(docs: list[dict[str, Any]], image: tuple[list[str], list[str]]) -> Problems:
    """Service → web pods, PDBs → existing pods, one migration Job, web and worker Deployments."""
    problems = []
    pods = {}  # role → (labels, container ports)
    for workload, template in pod_specs(docs):
        for c in template["spec"]["containers"]:
            role = k8s_argv(c, image)[1]
            if workload["kind"] == "Deployment":
                pods[role] = (template["metadata"].get("labels", {}), c.get("ports", []))
            if workload["kind"] == "Job" and role == "migrate" and "backoffLimit" not in workload["spec"]:
                problems.append("migration Job has no backoffLimit")
    if not any(d["kind"] == "Job" and "migrate" in str(d["spec"]) for d in docs):
        problems.append("no migration Job")
    problems += [f"no {role} Deployment" for role in ("web", "worker") if role not in pods]
    for svc in (d for d in docs if d["kind"] == "Service"):
        chosen = [role for role, (labels, _) in pods.items() if selects(svc["spec"]["selector"], labels)]
        if chosen != ["web"]:
            problems.append(f"Service {svc['metadata']['name']} selects {chosen}, not the web pods only")
        ports = pods.get("web", ({}, []))[1]
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            if port["port"] != 8000 or not any(target in (p.get("name"), p["containerPort"]) for p in ports):
                problems.append(f"Service port {port} does not reach web's port 8000")
    covered = set()
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        chosen = [r for r, (labels, _) in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        covered |= set(chosen)
        if not chosen:
            problems.append(f"PDB {pdb['metadata']['name']} selects no pods")
    problems += [f"no PodDisruptionBudget for {r}" for r in ("web", "worker") if r not in covered]
    return problems


def compose_problems(compose: dict[str, Any], image: tuple[list[str], list[str]]) -> Problems:
    services = compose["services"]
    problems = []
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        problems += [f"{name} depends on unknown service {d}" for d in deps if d not in services]
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if not source.startswith((".", "/")) and source not in (compose.get("volumes") or {}):
                problems.append(f"{name} uses undeclared volume {source}")
        for key, value in compose_env(svc).items():
            if is_secret(key) and not re.fullmatch(r".*\$\{\w+:\?[^}]*\}.*", value):
                problems.append(f"{name}: {key} is not a required ${{VAR:?…}} interpolation")
            url = interpolate(value, {})
            host = urlsplit(url).hostname if "://" in url else None
            if host and "." not in host and host not in {"localhost", *services}:
                problems.append(f"{name}: {key} points at unknown host {host}")
    roles = {compose_argv(s, image)[1]: n for n, s in relay_services(compose).items()}
    condition = {
        ("web", "migrate"): "service_completed_successfully",
        ("worker", "migrate"): "service_completed_successfully",
        ("migrate", "postgres"): "service_healthy",
    }
    for (role, dep_role), wanted in condition.items():
        svc = services.get(roles.get(role, ""), {})
        dep = roles.get(dep_role, dep_role)
        if svc.get("depends_on", {}).get(dep, {}).get("condition") != wanted:
            problems.append(f"{role} does not wait for {dep} ({wanted})")
    postgres = services.get("postgres", {})
    if "pg_isready" not in str(postgres.get("healthcheck", {}).get("test")) or not postgres.get("volumes"):
        problems.append("postgres lacks a pg_isready healthcheck or a volume")
    worker = services.get(roles.get("worker", ""), {})
    if worker.get("deploy", {}).get("replicas") != 2:
        problems.append("worker does not run 2 replicas")
    grace = grace_seconds(compose_env(worker))
    if seconds(worker.get("stop_grace_period", "10s")) <= grace:
        problems.append("worker stop_grace_period does not exceed RELAY_SHUTDOWN_GRACE_SECONDS")
    sandbox = services.get(roles.get("sandbox", ""), {})
    if compose_env(sandbox).get("CODAT_SANDBOX_WEBHOOK_URL") != "http://web:8000/webhooks/codat":
        problems.append("sandbox does not deliver to http://web:8000/webhooks/codat")
    return problems


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from (str(key), *strings(value))
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif node is not None:
        yield str(node)


def env_example_problems(example: str, compose_text: str) -> Problems:
    keys = env_example_keys(example)
    values = strings(yaml.safe_load(compose_text))  # parsed, so that comments do not count
    interpolated = {m.group(1): m.group(2) for v in values for m in INTERPOLATION.finditer(v)}
    problems = env_name_problems(keys, COMPOSE_ONLY_VARIABLES)
    problems += [f"{k} is in .env.example but compose never reads it" for k in keys if k not in interpolated]
    problems += [f"required {k} is not documented in .env.example" for k, op in interpolated.items()
                 if op == "?" and k not in keys]
    problems += [f"{k} has a value in .env.example: secrets stay empty there" for k, v in keys.items()
                 if v and (is_secret(k) or "PASSWORD" in k)]
    return problems


def value_problems(
    docs: list[dict[str, Any]], compose: dict[str, Any], image: tuple[list[str], list[str]]
) -> Problems:
    """Values, not just names: start-up validation of the ConfigMap and each compose environment."""
    problems = []
    sample = {"RELAY_WEBHOOK_SECRETS": TEST_SECRET}  # stands in for the Secret / deploy/.env
    envs = [("ConfigMap", {**d.get("data", {}), **sample}) for d in docs if d["kind"] == "ConfigMap"]
    envs += [
        (name, {k: interpolate(v, sample) for k, v in compose_env(svc).items()})
        for name, svc in relay_services(compose).items()
    ]
    for where, env in envs:
        try:
            if compose_argv(compose["services"].get(where, {}), image)[1:2] == ["sandbox"]:
                SandboxConfig.from_env(env)
            else:
                load_settings(env)
        except (SettingsError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
    return problems


def kustomization_problems(listed: list[str], present: set[str]) -> Problems:
    manifests = present - {"kustomization.yaml", "secret.example.yaml"}
    problems = [f"{name} is listed but does not exist" for name in listed if name not in present]
    problems += [f"{name} exists but is not listed" for name in sorted(manifests - set(listed))]
    if "secret.example.yaml" in listed:
        problems.append("the example Secret (empty values) would be applied over the real one")
    return problems


# ---------------------------------------------------------------- tests on the real files


def test_every_yaml_file_parses() -> None:
    """Every YAML file under deploy/ parses, each document a mapping."""
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(files) >= 9
    for path in files:
        docs = yaml_docs(path.read_text())
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_every_variable_set_is_a_setting_or_sandbox_variable() -> None:
    """Dockerfile ENV, ConfigMap, Secret, pod env and compose environment set only real variables."""
    compose = compose_doc()
    names = [n for svc in relay_services(compose).values() for n in compose_env(svc)]
    problems = env_name_problems(dockerfile_env(dockerfile_text()), IMAGE_RUNTIME_VARIABLES)
    problems += env_name_problems(k8s_env_names(k8s_docs()) + names)
    assert problems == []
    assert {"RELAY_DATABASE_URL", "RELAY_WEBHOOK_SECRETS", "CODAT_SANDBOX_WEBHOOK_URL"} <= set(names)


def test_configmap_and_compose_values_are_valid_settings() -> None:
    """The ConfigMap and each compose service's environment load as Settings / SandboxConfig."""
    assert value_problems(k8s_docs(), compose_doc(), image_argv(dockerfile_text())) == []


def test_every_probe_path_is_a_route(
    relay_routes: set[str], worker_routes: set[str], sandbox_routes: set[str]
) -> None:
    """Kubernetes probes, scrape annotations and every healthcheck hit real routes of their own app."""
    image = image_argv(dockerfile_text())
    routes = {"serve": relay_routes, "web": relay_routes, "worker": worker_routes, "sandbox": sandbox_routes}
    k8s_paths = k8s_http_paths(k8s_docs(), image)
    problems = role_path_problems(k8s_paths, routes)
    # The image's HEALTHCHECK applies to every subcommand that serves HTTP.
    problems += path_problems(http_paths(dockerfile_text()), relay_routes & worker_routes)
    checked = {role for role, _ in k8s_paths}
    for svc in relay_services(compose_doc()).values():
        check = " ".join(map(str, svc.get("healthcheck", {}).get("test", [])))
        role = compose_argv(svc, image)[1]
        problems += role_path_problems([(role, path) for path in http_paths(check)], routes)
        checked |= {role} if http_paths(check) else set()
        webhook = compose_env(svc).get("CODAT_SANDBOX_WEBHOOK_URL")
        problems += path_problems([urlsplit(webhook).path] if webhook else [], relay_routes)
    assert problems == []
    assert {"web", "worker", "sandbox"} <= checked  # every long-running role is probed somewhere


def test_every_command_is_a_codat_relay_subcommand() -> None:
    """Every container's effective argv (image ENTRYPOINT/CMD applied) parses as a codat-relay command."""
    image = image_argv(dockerfile_text())
    argvs = [image[0] + image[1]]
    argvs += [k8s_argv(c, image) for _, t in pod_specs(k8s_docs()) for c in containers(t)]
    argvs += [compose_argv(svc, image) for svc in relay_services(compose_doc()).values()]
    assert [p for argv in argvs for p in command_problems(argv)] == []
    assert {argv[1] for argv in argvs} == {"serve", "web", "worker", "migrate", "sandbox"}


def test_dockerfile() -> None:
    """Multi-stage, slim final stage with the venv only, non-root, /healthz check, port 8000, codat-relay."""
    assert dockerfile_problems(dockerfile_text()) == []


def test_dockerignore_keeps_what_the_build_copies_and_nothing_secret() -> None:
    """deploy/Dockerfile.dockerignore lets every COPY source in and keeps local secrets and state out."""
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    assert dockerignore_problems(ignore, dockerfile_text()) == []


def test_k8s_workloads_are_hardened_and_probed() -> None:
    """Selectors match, non-root, read-only root with /tmp, resources, web probes, long enough grace."""
    assert workload_problems(k8s_docs(), image_argv(dockerfile_text())) == []


def test_k8s_secrets_are_referenced_never_written() -> None:
    """Secret settings come only from the Secret, by reference; the example Secret holds no values."""
    docs = k8s_docs()
    assert secret_ref_problems(docs) == []
    example = next(d for d in docs if d["kind"] == "Secret")
    assert set(example["stringData"]) == {
        "RELAY_DATABASE_URL", "RELAY_WEBHOOK_SECRETS", "RELAY_API_TOKEN", "RELAY_ADMIN_TOKEN", "RELAY_CODAT_API_KEY"
    }
    assert set(example["stringData"].values()) == {""}


def test_k8s_topology() -> None:
    """Service reaches web pods only, PDBs cover web and worker, the migration Job exists."""
    assert topology_problems(k8s_docs(), image_argv(dockerfile_text())) == []


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    """kustomization.yaml names every manifest that exists, and never the example Secret."""
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert kustomization_problems(listed, {p.name for p in K8S.glob("*.yaml")}) == []


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds() -> None:
    """`kubectl kustomize deploy/k8s` renders every resource into the codat-relay namespace."""
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
    docs = yaml_docs(out)
    assert {d["kind"] for d in docs} >= {"Namespace", "ConfigMap", "Deployment", "Service", "Job"}
    assert all(d["metadata"].get("namespace") == "codat-relay" for d in docs if d["kind"] != "Namespace")


def test_compose_wiring() -> None:
    """Compose: dependencies exist and wait properly, 2 workers, secrets required, sandbox → web."""
    assert compose_problems(compose_doc(), image_argv(dockerfile_text())) == []


def test_env_example_documents_exactly_what_compose_reads() -> None:
    """.env.example names real variables, every required one, and carries no secret values."""
    example = (DEPLOY / ".env.example").read_text()
    assert env_example_problems(example, (DEPLOY / "compose.yaml").read_text()) == []


# ---------------------------------------------------------------- each check bites


IMAGE = ([RELAY], ["serve"])
GOOD_DOCKERFILE = dockerfile_text()
GOOD_K8S = "\n---\n".join((K8S / name).read_text() for name in (
    "configmap.yaml", "secret.example.yaml", "web-deployment.yaml", "worker-deployment.yaml",
    "service.yaml", "migrate-job.yaml", "pdb.yaml",
))
GOOD_COMPOSE = (DEPLOY / "compose.yaml").read_text()


def broken_k8s(old: str, new: str) -> list[dict[str, Any]]:
    assert old in GOOD_K8S, old  # the fixture must really change something
    return yaml_docs(GOOD_K8S.replace(old, new, 1))


def broken_compose(old: str, new: str) -> dict[str, Any]:
    assert old in GOOD_COMPOSE, old
    doc: dict[str, Any] = yaml.safe_load(GOOD_COMPOSE.replace(old, new))
    return doc


def broken_dockerfile(old: str, new: str) -> str:
    assert old in GOOD_DOCKERFILE, old
    return GOOD_DOCKERFILE.replace(old, new)


SINGLE_STAGE = """FROM python:3.11-slim
ENV RELAY_HOST=0.0.0.0
WORKDIR /app
USER 10001
EXPOSE 8000
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
ENTRYPOINT ["codat-relay"]
CMD ["serve"]
"""
LITERAL_TOKEN = "          env:\n            - name: RELAY_API_TOKEN\n              value: abc\n          envFrom:"
WORKER_SELECTOR = "      app.kubernetes.io/component: worker\n  template"
WEB_SERVICE_SELECTOR = "  selector:\n    app.kubernetes.io/name: codat-relay\n    app.kubernetes.io/component: web"
WORKER_PDB = "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: codat-relay"
WORKER_READINESS = (  # web's readiness probe runs every 5 s, so this matches the worker's only
    "          readinessProbe:\n            httpGet:\n              path: /readyz\n"
    "              port: http\n            periodSeconds: 10"
)
API_TOKEN_REF = "${RELAY_API_TOKEN:?set RELAY_API_TOKEN in deploy/.env}"
K8S_FILES = {p.name for p in K8S.glob("*.yaml")}

# case → (a check fed a broken variant of the real files, a phrase the problem it reports must contain)
BAD: dict[str, tuple[Callable[[set[str]], Problems], str]] = {
    "env name typo": (lambda _: env_name_problems(
        k8s_env_names(broken_k8s("RELAY_LOG_LEVEL:", "RELAY_LOGLEVEL:"))), "RELAY_LOGLEVEL is neither"),
    "foreign variable": (lambda _: env_name_problems(["RELAY_TEST_POSTGRES_URL"]), "is neither"),
    "sandbox variable typo": (lambda _: env_name_problems(["CODAT_SANDBOX_WEBHOOK_URI"]), "is neither"),
    "invalid setting value": (lambda _: value_problems(
        broken_k8s('RELAY_LOG_LEVEL: "info"', 'RELAY_LOG_LEVEL: "loud"'), {"services": {}}, IMAGE),
        "RELAY_LOG_LEVEL"),
    "invalid sandbox value": (lambda _: value_problems(
        [], broken_compose("CODAT_SANDBOX_WEBHOOK_SHAPE: envelope", "CODAT_SANDBOX_WEBHOOK_SHAPE: json"), IMAGE),
        "webhook_shape"),
    "probe path": (lambda routes: role_path_problems(k8s_http_paths(
        broken_k8s("path: /readyz", "path: /ready"), IMAGE), {"web": routes}), "/ready is not a route"),
    "worker probes a web-only route": (lambda routes: role_path_problems(k8s_http_paths(
        broken_k8s(WORKER_READINESS, WORKER_READINESS.replace("/readyz", "/v1/alerts")), IMAGE),
        {"web": routes, "worker": routes - {"/v1/alerts"}}), "/v1/alerts is not a route of `worker`"),
    "healthcheck path": (lambda routes: path_problems(
        http_paths(broken_dockerfile("/healthz", "/health")), routes), "/health is not a route"),
    "unknown subcommand": (lambda _: command_problems([RELAY, "workers"]), "invalid choice"),
    "bad sandbox flag": (lambda _: command_problems([RELAY, "sandbox", "--prot", "8900"]), "unrecognized"),
    "not codat-relay": (lambda _: command_problems(["uvicorn", "service.web.app:app"]), "does not run"),
    "single stage": (lambda _: dockerfile_problems(SINGLE_STAGE), "not multi-stage"),
    "root user": (lambda _: dockerfile_problems(broken_dockerfile("USER 10001:10001", "USER root")), "non-root"),
    "no healthcheck": (lambda _: dockerfile_problems(broken_dockerfile("HEALTHCHECK", "LABEL x=")), "HEALTHCHECK"),
    "no expose": (lambda _: dockerfile_problems(broken_dockerfile("EXPOSE 8000", "EXPOSE 8080")), "EXPOSE"),
    "loopback host": (lambda _: dockerfile_problems(
        broken_dockerfile("RELAY_HOST=0.0.0.0", "RELAY_HOST=127.0.0.1")), "RELAY_HOST"),
    "wrong entrypoint": (lambda _: dockerfile_problems(
        broken_dockerfile('ENTRYPOINT ["codat-relay"]', 'ENTRYPOINT ["python"]')), "ENTRYPOINT"),
    "source in final stage": (lambda _: dockerfile_problems(
        GOOD_DOCKERFILE + "\nCOPY service /app/service\n"), "copies more"),
    "dockerignore drops service": (lambda _: dockerignore_problems(
        "*\n!pyproject.toml\n", GOOD_DOCKERFILE), "service is copied but ignored"),
    "dockerignore leaks env": (lambda _: dockerignore_problems(
        "**/__pycache__\n", GOOD_DOCKERFILE), ".relay-local.env would be sent"),
    "selector mismatch": (lambda _: workload_problems(broken_k8s(
        WORKER_SELECTOR, WORKER_SELECTOR.replace("worker", "w")), IMAGE), "selector does not match"),
    "runs as root": (lambda _: workload_problems(
        broken_k8s("runAsNonRoot: true", "runAsNonRoot: false"), IMAGE), "may run as root"),
    "writable root": (lambda _: workload_problems(
        broken_k8s("readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"), IMAGE), "writable"),
    "no tmp": (lambda _: workload_problems(broken_k8s("mountPath: /tmp", "mountPath: /scratch"), IMAGE),
               "no emptyDir on /tmp"),
    "no resources": (lambda _: workload_problems(
        broken_k8s("memory: 512Mi", "ephemeral-storage: 1Gi"), IMAGE), "resources.limits"),
    "no readiness": (lambda _: workload_problems(
        broken_k8s("readinessProbe:", "x-readiness:"), IMAGE), "readiness probe"),
    "no liveness": (lambda _: workload_problems(
        broken_k8s("livenessProbe:", "x-liveness:"), IMAGE), "liveness probe"),
    "no worker readiness": (lambda _: workload_problems(
        broken_k8s(WORKER_READINESS, "          x-readiness:"), IMAGE), "worker readiness probe"),
    "short web grace": (lambda _: workload_problems(broken_k8s(
        "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 25"), IMAGE), "uvicorn"),
    "short worker grace": (lambda _: workload_problems(broken_k8s(
        "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 10"), IMAGE), "shutdown grace"),
    "literal secret": (lambda _: secret_ref_problems(
        broken_k8s("          envFrom:", LITERAL_TOKEN)), "RELAY_API_TOKEN is not read from a Secret"),
    "unknown secret": (lambda _: secret_ref_problems(
        broken_k8s("name: codat-relay-secrets\n", "name: relay-secrets\n")), "unknown Secret"),
    "secret in configmap": (lambda _: secret_ref_problems(
        broken_k8s('RELAY_LOG_LEVEL: "info"', "RELAY_ADMIN_TOKEN: x")), "in ConfigMap"),
    "service selects workers": (lambda _: topology_problems(broken_k8s(
        WEB_SERVICE_SELECTOR, "  selector:\n    app.kubernetes.io/name: codat-relay"), IMAGE), "web pods only"),
    "service port": (lambda _: topology_problems(
        broken_k8s("      targetPort: http", "      targetPort: 9000"), IMAGE), "does not reach"),
    "pdb selects nothing": (lambda _: topology_problems(broken_k8s(
        WORKER_PDB, WORKER_PDB.replace("name: codat-relay", "name: other")), IMAGE), "selects no pods"),
    "no migration job": (lambda _: topology_problems(
        [d for d in yaml_docs(GOOD_K8S) if d["kind"] != "Job"], IMAGE), "no migration Job"),
    "job without backoffLimit": (lambda _: topology_problems(
        broken_k8s("  backoffLimit: 4\n", ""), IMAGE), "backoffLimit"),
    "kustomization forgets a file": (lambda _: kustomization_problems(
        ["namespace.yaml"], K8S_FILES), "is not listed"),
    "kustomization applies the example": (lambda _: kustomization_problems(
        sorted(K8S_FILES - {"kustomization.yaml"}), K8S_FILES), "example Secret"),
    "depends on unknown": (lambda _: compose_problems(broken_compose(
        "      migrate:\n        condition", "      migrat:\n        condition"), IMAGE), "unknown service migrat"),
    "migrate races postgres": (lambda _: compose_problems(
        broken_compose("condition: service_healthy", "condition: service_started"), IMAGE), "postgres"),
    "undeclared volume": (lambda _: compose_problems(
        broken_compose("volumes:\n  pgdata:\n", "volumes: {}\n"), IMAGE), "undeclared volume"),
    "literal compose secret": (lambda _: compose_problems(
        broken_compose(API_TOKEN_REF, "hunter2"), IMAGE), "RELAY_API_TOKEN is not a required"),
    "one worker": (lambda _: compose_problems(broken_compose("replicas: 2", "replicas: 1"), IMAGE), "2 replicas"),
    "worker killed early": (lambda _: compose_problems(
        broken_compose("stop_grace_period: 30s", "stop_grace_period: 10s"), IMAGE), "stop_grace_period"),
    "sandbox to wrong host": (lambda _: compose_problems(broken_compose(
        "http://web:8000/webhooks/codat", "http://relay:8000/webhooks/codat"), IMAGE), "unknown host relay"),
    "env example with a secret": (lambda _: env_example_problems(
        (DEPLOY / ".env.example").read_text().replace("RELAY_API_TOKEN=", "RELAY_API_TOKEN=abc"), GOOD_COMPOSE),
        "RELAY_API_TOKEN has a value"),
    "env example missing a key": (lambda _: env_example_problems(
        (DEPLOY / ".env.example").read_text().replace("POSTGRES_PASSWORD=", ""), GOOD_COMPOSE),
        "required POSTGRES_PASSWORD"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_bites(case: str, relay_routes: set[str]) -> None:
    """Each check reports a deliberately broken variant of the real files, for the intended reason."""
    check, reason = BAD[case]
    problems = check(relay_routes)
    assert any(reason in problem for problem in problems), problems
