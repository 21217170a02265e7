"""docker-compose.yml and the Dockerfile agree with the demo config and with the real CLI.

Pure and fast: no Docker engine. The compose file is read with PyYAML (anchors and merge keys
resolved, ``${VAR:-default}`` replaced by its default, as Compose does with VAR unset); every
``worldlm`` command in it is parsed by the real click command behind ``worldlm.cli.app``.
Only the last test runs ``docker compose config``, and only where a Compose v2 CLI is installed.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from worldlm.cli import app
from worldlm.config.hierarchy import Hierarchy, load
from worldlm.participants.shares import Share, assignment

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEMO = REPO / "worldlm" / "configs" / "demo.toml"
IMAGE_ROOT = "/app/"  # the Dockerfile copies the repository here (checked below)

_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


def _interpolate(value: Any) -> Any:
    """Compose's variable substitution with every variable unset: the shipped defaults."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m["default"] or "", value.replace("$$", "\0")).replace("\0", "$")
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@cache
def compose() -> dict[str, Any]:
    with COMPOSE.open() as f:
        document = yaml.safe_load(f)
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    result: dict[str, Any] = _interpolate(document)
    return result


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def image_entrypoint() -> list[str]:
    entrypoints = [args for kw, args in dockerfile() if kw == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    entrypoint = json.loads(entrypoints[-1])
    assert isinstance(entrypoint, list)
    return [str(part) for part in entrypoint]


def as_argv(value: str | list[Any] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(part) for part in value]


def runs_our_image(service: dict[str, Any]) -> bool:
    return "build" in service or str(service.get("image", "")).startswith("worldlm")


def argv(service: dict[str, Any]) -> list[str]:
    """What the container executes: its entrypoint (the image's unless overridden) + command."""
    if "entrypoint" in service:
        entrypoint = as_argv(service["entrypoint"])
    elif runs_our_image(service):
        entrypoint = image_entrypoint()
    else:
        entrypoint = []
    return entrypoint + as_argv(service.get("command"))


def worldlm_services() -> dict[str, list[str]]:
    """Every service whose command is a ``worldlm`` command, with its argv."""
    found = {name: argv(s) for name, s in services().items()}
    return {name: args for name, args in found.items() if args[:1] == ["worldlm"]}


def participant_services() -> dict[str, list[str]]:
    """The services that run a participant (``worldlm aggregator`` or ``worldlm client``)."""
    return {n: a for n, a in worldlm_services().items() if a[1:2] in (["aggregator"], ["client"])}


def share_services() -> dict[str, list[str]]:
    """The services that run a share of the config (``worldlm run CONFIG --share i/N``)."""
    return {
        n: a
        for n, a in worldlm_services().items()
        if a[1:2] == ["run"] and option_value(a, "--share") is not None
    }


def option_value(args: list[str], flag: str) -> str | None:
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]
    values += [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    assert len(values) <= 1, f"{flag} given {len(values)} times in {args}"
    return values[0] if values else None


def resolve_command(args: list[str]) -> tuple[Any, list[str]]:
    """The (click) command that ``worldlm ARGS`` runs, and the arguments left for it.

    Typer vendors its own copy of click, so groups are recognised by their ``commands``.
    """
    command: Any = typer.main.get_command(app)
    rest = args[1:]
    while isinstance(getattr(command, "commands", None), dict):
        assert rest, f"{args}: no subcommand of {command.name!r}"
        sub = command.commands.get(rest[0])
        assert sub is not None, (
            f"{args}: {rest[0]!r} is not a command of {command.name!r}; "
            f"it has {sorted(command.commands)}"
        )
        command, rest = sub, rest[1:]
    return command, rest


@cache
def demo() -> Hierarchy:
    return load(DEMO)


def participants() -> dict[str, str]:
    """Every participant of the demo config and its role."""
    hierarchy = demo()
    roles = dict.fromkeys(hierarchy.federations, "aggregator")
    roles.update(dict.fromkeys(hierarchy.clients, "client"))
    return roles


# ---- the compose file --------------------------------------------------------------------------


def test_compose_file_parses_with_kafka_redis_and_participant_services() -> None:
    names = set(services())
    assert {"kafka", "redis"} <= names
    assert worldlm_services(), "no service runs a worldlm command"


def test_every_demo_participant_has_exactly_one_service_with_its_role_and_node() -> None:
    expected = participants()
    assert len(expected) == 10  # root, 3 federations, 6 clients: the demo this file mirrors
    seen: dict[str, list[tuple[str, str]]] = {}
    for name, args in participant_services().items():
        node = option_value(args, "--node")
        assert node is not None, f"service {name} runs {args} without --node"
        seen.setdefault(node, []).append((name, args[1]))
    missing, unknown = set(expected) - set(seen), set(seen) - set(expected)
    assert not missing and not unknown, f"missing: {sorted(missing)}, unknown: {sorted(unknown)}"
    for node, role in expected.items():
        assert len(seen[node]) == 1, f"{node} is run by several services: {seen[node]}"
        service, command = seen[node][0]
        assert command == role, f"service {service} runs `worldlm {command}` for {role} {node}"


def test_every_worldlm_command_is_a_real_cli_command_with_only_its_own_flags() -> None:
    for name, args in worldlm_services().items():
        command, rest = resolve_command(args)
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        flags = {a.split("=", 1)[0] for a in rest if a.startswith("-")}
        unknown = flags - known
        assert not unknown, f"service {name}: {command.name} has no {sorted(unknown)}"
        # And the real parser accepts the whole command line (required options, values, types).
        try:
            command.make_context(f"worldlm {command.name}", list(rest))
        except Exception as exc:  # click's UsageError and friends, from typer's own click
            message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
            pytest.fail(f"service {name}: `{shlex.join(args)}` is rejected: {message}")


def test_participants_use_exactly_the_bare_metal_flags() -> None:
    for name, args in participant_services().items():
        flags = [a for a in args if a.startswith("--")]
        expected = ["--config", "--node", "--kafka", "--redis"]
        if args[1] == "aggregator":
            expected.append("--checkpoint-dir")
        assert sorted(flags) == sorted(expected), f"service {name} runs {args}"


def test_config_paths_point_into_the_image_at_a_shipped_config_file() -> None:
    workdirs = [args for kw, args in dockerfile() if kw == "WORKDIR"]
    copies = [args.split() for kw, args in dockerfile() if kw == "COPY"]
    assert workdirs and workdirs[-1].rstrip("/") + "/" == IMAGE_ROOT
    assert [".", "."] in copies, "the Dockerfile does not copy the repository into /app"
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for name, args in worldlm_services().items():
        # `worldlm acl CONFIG` and `worldlm run CONFIG` take it as an argument, the others
        # as --config.
        positional = args[1:2] in (["acl"], ["run"])
        config = args[2] if positional else option_value(args, "--config")
        assert config is not None and config.startswith(IMAGE_ROOT), f"{name}: --config {config}"
        relative = config.removeprefix(IMAGE_ROOT)
        assert (REPO / relative).is_file(), f"{name}: {config} is not a file of the repository"
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in ignored:
            hit = [p for p in prefixes if fnmatch.fnmatch(p, pattern.strip("/"))]
            assert not hit, (
                f"{name}: {config} is excluded from the image by .dockerignore {pattern}"
            )
        assert load(REPO / relative).run.id == demo().run.id


def test_kafka_and_redis_have_healthchecks() -> None:
    kafka, redis = services()["kafka"], services()["redis"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    assert str(redis["image"]).startswith("redis:7")
    for name, service in (("kafka", kafka), ("redis", redis)):
        check = service.get("healthcheck", {})
        assert not check.get("disable", False), f"{name}: healthcheck disabled"
        test = as_argv(check.get("test"))
        assert test and test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, f"{name}: {test}"


def test_every_participant_starts_only_once_kafka_and_redis_are_healthy() -> None:
    for name in worldlm_services():
        depends = services()[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions"
        for broker in ("kafka", "redis"):
            condition = depends.get(broker, {}).get("condition")
            assert condition == "service_healthy", f"{name} -> {broker}: {condition}"


def test_aggregators_checkpoint_on_a_named_volume_and_restart_on_failure() -> None:
    declared = set(compose().get("volumes") or {})
    aggregators = {n: a for n, a in worldlm_services().items() if a[1] == "aggregator"}
    assert len(aggregators) == len(demo().federations)
    for name, args in aggregators.items():
        service = services()[name]
        assert service.get("restart") == "on-failure", f"{name}: restart {service.get('restart')}"
        checkpoint_dir = option_value(args, "--checkpoint-dir")
        mounts: dict[str, str] = {}
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source, target = volume.split(":")[:2]
            else:
                source, target = volume["source"], volume["target"]
            mounts[target.rstrip("/")] = source
        assert checkpoint_dir is not None
        mounted = mounts.get(checkpoint_dir.rstrip("/"))
        assert mounted in declared, f"{name}: {checkpoint_dir} is not on a named volume ({mounts})"


def _share(args: list[str]) -> Share:
    text = option_value(args, "--share")
    assert text is not None
    return Share.parse(text)


def test_share_services_together_run_every_demo_participant_exactly_once() -> None:
    shares = {name: _share(args) for name, args in share_services().items()}
    assert len(shares) >= 2, "the file shows one config spread over several containers"
    counts = {share.count for share in shares.values()}
    assert len(counts) == 1, f"the shares split the config differently: {shares}"
    assert sorted(share.index for share in shares.values()) == list(range(1, counts.pop() + 1))
    held = [p for share in shares.values() for p in assignment(demo(), share).participants]
    assert sorted(held) == sorted(participants())  # the real split: all, each exactly once
    per_participant = {option_value(a, "--config") for a in participant_services().values()}
    assert {args[2] for args in share_services().values()} == per_participant


def test_share_services_are_opt_in_so_a_plain_up_never_runs_the_demo_twice() -> None:
    for name in share_services():
        assert services()[name].get("profiles") == ["shares"], name
    for name in participant_services():
        assert not services()[name].get("profiles"), name


def test_shares_holding_aggregators_checkpoint_on_a_named_volume_and_restart_on_failure() -> None:
    declared = set(compose().get("volumes") or {})
    for name, args in share_services().items():
        if not assignment(demo(), _share(args)).aggregators:
            continue
        service = services()[name]
        assert service.get("restart") == "on-failure", f"{name}: restart {service.get('restart')}"
        checkpoint_dir = option_value(args, "--checkpoint-dir")
        assert checkpoint_dir is not None, f"{name} holds aggregators but keeps no checkpoints"
        mounts = {
            str(v).split(":")[1].rstrip("/"): str(v).split(":")[0] for v in service["volumes"]
        }
        assert mounts.get(checkpoint_dir.rstrip("/")) in declared, f"{name}: {mounts}"


def _broker_retention_ms(env: dict[str, Any]) -> int:
    """Kafka's default retention from its settings: ms over minutes over hours (as Kafka reads
    them); 168 hours when none is set."""
    for name, factor in (("MS", 1), ("MINUTES", 60_000), ("HOURS", 3_600_000)):
        value = env.get(f"KAFKA_LOG_RETENTION_{name}")
        if value is not None:
            return int(value) * factor if int(value) >= 0 else -1
    return 168 * 3_600_000


def test_kafka_keeps_a_runs_records_for_its_replay_window_on_a_named_volume() -> None:
    kafka = services()["kafka"]
    env = kafka["environment"]
    window = demo().run.retention_ms  # what the run's topics get
    default = _broker_retention_ms(env)  # what topics made any other way get
    assert window == -1 or window > 0
    assert default == -1 or (window != -1 and default >= window), (
        f"the broker default keeps records {default} ms, the demo's replay window is {window} ms"
    )
    assert int(env.get("KAFKA_LOG_RETENTION_BYTES", -1)) == -1, "records dropped by size"
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in kafka.get("volumes", [])}
    log_dir = str(env["KAFKA_LOG_DIRS"])
    assert mounts.get(log_dir) in set(compose().get("volumes") or {}), (
        f"the log {log_dir} is not on a named volume: it would not outlive the container"
    )


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` as {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        listener, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        result[listener] = (host, int(port))
    return result


def test_participants_reach_kafka_at_its_advertised_listener_and_redis_at_its_service() -> None:
    kafka = services()["kafka"]
    env = kafka["environment"]
    advertised = _listeners(str(env["KAFKA_ADVERTISED_LISTENERS"]))
    listening = _listeners(str(env["KAFKA_LISTENERS"]))
    names = {"kafka", kafka.get("hostname", "kafka")}
    for name, args in worldlm_services().items():
        address = option_value(args, "--kafka")
        assert address is not None
        matches = [n for n, (h, p) in advertised.items() if f"{h}:{p}" == address]
        assert matches, f"{name}: --kafka {address} is not advertised ({advertised})"
        listener = matches[0]
        assert advertised[listener][0] in names, f"{name}: {address} is not the kafka service"
        assert listening[listener][1] == advertised[listener][1], f"{listener} listens elsewhere"
        redis = option_value(args, "--redis")
        assert redis is not None
        match = re.fullmatch(r"redis://(?P<host>[\w.-]+):(?P<port>\d+)/\d+", redis)
        assert match and match["host"] == "redis" and match["port"] == "6379", f"{name}: {redis}"


# ---- observability: the dashboard and Prometheus ----------------------------------------------

PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus.yml"


def test_dashboard_service_follows_the_demo_run_and_listens_on_its_published_port() -> None:
    dashboards = {n: a for n, a in worldlm_services().items() if a[1:2] == ["dashboard"]}
    assert list(dashboards) == ["dashboard"], f"one dashboard service expected: {dashboards}"
    args = dashboards["dashboard"]
    # The real CLI accepts it (checked for every worldlm service above); here, what it means:
    assert option_value(args, "--config") is not None  # the demo's tree, quorums, deadlines
    assert option_value(args, "--host") == "0.0.0.0", "reachable from outside its container"
    port = option_value(args, "--port")
    assert port is not None
    published = [str(p).rsplit(":", 2) for p in services()["dashboard"].get("ports", [])]
    assert any(mapping[-1] == port for mapping in published), f"{port} not published"


def _prometheus_config() -> dict[str, Any]:
    with PROMETHEUS_CONFIG.open() as f:
        config = yaml.safe_load(f)
    assert isinstance(config, dict)
    return config


def test_prometheus_service_loads_the_shipped_config_and_scrapes_the_dashboard() -> None:
    prometheus = services()["prometheus"]
    assert str(prometheus["image"]).startswith("prom/prometheus:")
    flags = dict(a.split("=", 1) for a in as_argv(prometheus.get("command")) if "=" in a)
    config_in_container = flags.get("--config.file")
    mounts = {}
    for volume in prometheus.get("volumes", []):
        host_path, target = str(volume).split(":")[:2]
        mounts[target] = host_path
    source = mounts.get(str(config_in_container))
    assert source is not None, f"{config_in_container} is not mounted ({mounts})"
    assert (REPO / source).resolve() == PROMETHEUS_CONFIG
    dashboard_port = option_value(worldlm_services()["dashboard"], "--port")
    jobs = _prometheus_config()["scrape_configs"]
    targets = [
        (job.get("metrics_path", "/metrics"), target)
        for job in jobs
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert ("/metrics", f"dashboard:{dashboard_port}") in targets, targets


# ---- the Dockerfile ----------------------------------------------------------------------------


def _is_torch_install(run: str) -> bool:
    return "pip install" in run and re.search(r"(?<![\w.-])torch(?![\w.-])", run) is not None


def test_dockerfile_installs_pinned_torch_before_the_project() -> None:
    steps = dockerfile()
    runs = [
        (i, args) for i, (kw, args) in enumerate(steps) if kw == "RUN" and "pip install" in args
    ]
    torch_steps = [i for i, run in runs if _is_torch_install(run)]
    project_steps = [i for i, run in runs if re.search(r"pip install .*(?<!\S)\.(?!\S)", run)]
    assert torch_steps and project_steps
    first_torch, project = torch_steps[0], project_steps[-1]
    assert first_torch < project, "torch must be installed before the project"
    for _, run in runs:  # every install is pinned by the same constraints as the Makefile's
        assert "-c constraints.txt" in run, f"unconstrained: RUN {run}"
    copied = [i for i, (kw, args) in enumerate(steps) if kw == "COPY" and "constraints.txt" in args]
    assert copied and copied[0] < first_torch, "constraints.txt is copied after it is needed"
    # The CPU index is for torch only; the project and its dependencies come from PyPI.
    for i, run in runs:
        uses_cpu_index = "download.pytorch.org/whl/cpu" in run
        assert uses_cpu_index == (i == first_torch), f"index misuse in RUN {run}"


def test_dockerfile_is_python_311_slim_offline_with_worldlm_entrypoint() -> None:
    steps = dockerfile()
    assert steps[0] == ("FROM", "python:3.11-slim")
    env = " ".join(args for kw, args in steps if kw == "ENV")
    assert re.search(r"\bHF_HUB_OFFLINE=1\b", env)
    assert image_entrypoint() == ["worldlm"]


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = {line.strip().strip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".git", "out", "checkpoints"} <= ignored


# ---- Docker Compose's own validation -----------------------------------------------------------


def _compose_cli() -> list[str] | None:
    """A Compose v2 CLI: the docker plugin, or a standalone docker-compose v2."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for cli in candidates:
        try:
            out = subprocess.run(
                [*cli, "version", "--short"], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2"):
            return cli
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI here (neither the docker compose plugin nor docker-compose)")
    # `config` validates against the Compose schema and resolves the file; it needs no engine.
    result = subprocess.run(
        [*cli, "-f", str(COMPOSE), "config", "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
