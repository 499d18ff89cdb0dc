"""deploy/: what can be checked without a Docker daemon.

Commands are parsed by the real CLI parser, environment names and values are read by the real
settings classes, and the nginx routes are resolved the way nginx chooses a location.

Over 400 lines on purpose: one file's checks (compose.yaml), read against that file.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opentelemetry.sdk import environment_variables as otel_environment
from pydantic import ValidationError

from services.registry import SERVICES
from shared.settings import ServiceSettings
from tests.deploy.compose_model import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    REPO,
    ConvoaiCommand,
    Directive,
    MissingVariable,
    depends_on,
    dockerignore_excludes,
    environment_of,
    interpolate,
    is_convoai_image,
    load_compose,
    match_location,
    parse_command,
    parse_dockerfile,
    parse_nginx,
    read_dockerignore,
    read_env_file,
    referenced_variables,
    settings_env_names,
)

COMPOSE = load_compose()
OTEL_SDK_VARIABLES = {
    value
    for name, value in vars(otel_environment).items()
    if name.startswith("OTEL_") and isinstance(value, str)
}
"""Settings the OpenTelemetry SDK reads itself (shared/tracing.py installs it)."""
SERVICES_IN_COMPOSE: dict[str, dict[str, Any]] = COMPOSE["services"]
APP_SERVICES = sorted(name for name, svc in SERVICES_IN_COMPOSE.items() if is_convoai_image(svc))
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "CONVOAI_JWT_SECRET")


def command_of(name: str) -> ConvoaiCommand:
    command = SERVICES_IN_COMPOSE[name].get("command")
    assert isinstance(command, list), f"{name}: use the exec form (a list) for command"
    return parse_command([str(part) for part in command])


def filled_env() -> dict[str, str]:
    """deploy/.env as an operator would write it: the example with its secrets filled in."""
    assigned, _documented = read_env_file(ENV_EXAMPLE)
    return {**assigned, **{name: secrets.token_hex(32) for name in REQUIRED_SECRETS}}


def fully_configured_env() -> dict[str, str]:
    """Every optional line of the example uncommented, as documented, plus the secrets."""
    _assigned, documented = read_env_file(ENV_EXAMPLE)
    return {**documented, **filled_env(), "CONVOAI_ADMIN_PASSWORD": secrets.token_urlsafe(16)}


def load_settings(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The service's settings object, built from exactly what Compose would put in the container."""
    command = command_of(name)
    service = interpolate(SERVICES_IN_COMPOSE[name], env)
    container_env = environment_of(service, env)
    for variable in list(os.environ):
        if variable.upper().startswith("CONVOAI_"):
            monkeypatch.delenv(variable)
    for variable, value in container_env.items():
        assert value is not None
        monkeypatch.setenv(variable, value)
    return command.settings_class(_env_file=None)


def healthcheck_command(name: str) -> list[str]:
    test = SERVICES_IN_COMPOSE[name].get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] == "CMD", f"{name}: healthcheck must be [CMD, ...]"
    return [str(part) for part in test[1:]]


# ---------------------------------------------------------------- commands and processes


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_service_runs_a_real_convoai_subcommand(name: str) -> None:
    command = command_of(name)
    if command.subcommand == "serve":
        assert command.service in SERVICES
        assert (
            "--host" in command.argv and command.argv[command.argv.index("--host") + 1] == "0.0.0.0"
        ), f"{name}: must listen on 0.0.0.0 to be reachable from other containers"


def test_every_registered_service_and_the_migration_are_deployed() -> None:
    commands = [command_of(name) for name in APP_SERVICES]
    served = sorted(c.service for c in commands if c.service)
    assert served == sorted(SERVICES), "each registered service runs in exactly one compose service"
    assert [c.subcommand for c in commands].count("migrate") == 1


def test_the_image_is_built_once_from_the_repository_root() -> None:
    builds = {repr(SERVICES_IN_COMPOSE[name]["build"]) for name in APP_SERVICES}
    images = {SERVICES_IN_COMPOSE[name].get("image") for name in APP_SERVICES}
    assert len(builds) == 1 and len(images) == 1, "every process must run the same image"
    context = (DEPLOY / SERVICES_IN_COMPOSE[APP_SERVICES[0]]["build"]["context"]).resolve()
    assert context == REPO


# ---------------------------------------------------------------- environment and settings


@pytest.mark.parametrize("name", APP_SERVICES)
def test_environment_names_are_fields_of_the_services_settings(name: str) -> None:
    known = settings_env_names(command_of(name).settings_class)
    used = environment_of(SERVICES_IN_COMPOSE[name])
    unknown = sorted(set(used) - set(known) - OTEL_SDK_VARIABLES)
    assert not unknown, f"{name}: not read by {command_of(name).settings_class.__name__}: {unknown}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_settings_load_from_the_compose_environment(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in (filled_env(), fully_configured_env()):
        settings = load_settings(name, env, monkeypatch)
        command = command_of(name)
        if isinstance(settings, ServiceSettings):
            assert settings.environment == "production"
            assert settings.jwt_secret == env["CONVOAI_JWT_SECRET"]
            assert urlsplit(settings.database_url).hostname == "postgres"
            assert urlsplit(settings.amqp_url).hostname == "rabbitmq"
            # The URLs hold passwords Compose substitutes; hex keeps them valid in a URL.
            assert urlsplit(settings.database_url).password == env["POSTGRES_PASSWORD"]
            assert urlsplit(settings.amqp_url).password == env["RABBITMQ_PASSWORD"]
        if command.default_port is not None:
            # The port is a command-line option only (a shared CONVOAI_PORT would move every
            # service at once); compose keeps each service on its documented port.
            assert command.port_option in (None, command.default_port), f"{name}: port moved"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_urls_in_settings_point_at_compose_services(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(name, filled_env(), monkeypatch)
    ports = {spec.name: spec.default_port for spec in SERVICES.values()}
    for field_name in type(settings).model_fields:
        value = getattr(settings, field_name)
        if not (field_name.endswith("_url") and isinstance(value, str)):
            continue
        url = urlsplit(value)
        assert url.hostname in SERVICES_IN_COMPOSE, f"{name}.{field_name}: {url.hostname} unknown"
        if url.hostname in ports:
            assert url.port == ports[url.hostname], f"{name}.{field_name}: wrong port"


def test_placeholder_secret_is_refused_by_the_deployed_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.settings import PLACEHOLDER_SECRET

    env = {**filled_env(), "CONVOAI_JWT_SECRET": PLACEHOLDER_SECRET}
    with pytest.raises(ValidationError, match="placeholder"):
        load_settings("gateway", env, monkeypatch)


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_compose_refuses_to_start_without_each_secret(secret: str) -> None:
    env = filled_env()
    del env[secret]
    with pytest.raises(MissingVariable) as missing:
        interpolate(COMPOSE, env)
    assert missing.value.name == secret


def test_the_example_env_file_leaves_every_secret_to_the_operator() -> None:
    assigned, _documented = read_env_file(ENV_EXAMPLE)
    for secret in REQUIRED_SECRETS:
        assert assigned.get(secret) == "", f"{secret} must be listed in .env.example and empty"
    with pytest.raises(MissingVariable):
        interpolate(COMPOSE, assigned)


def test_every_variable_compose_reads_is_documented_and_vice_versa() -> None:
    assigned, documented = read_env_file(ENV_EXAMPLE)
    interpolated = referenced_variables(COMPOSE)
    passed_through = {
        variable
        for service in SERVICES_IN_COMPOSE.values()
        for variable, value in environment_of(service).items()
        if value is None
    }
    used = interpolated | passed_through
    in_example = set(assigned) | set(documented)
    assert sorted(used - in_example) == [], "used by compose.yaml but missing in .env.example"
    assert sorted(in_example - used) == [], "documented in .env.example but never used"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_an_empty_variable_never_replaces_a_meaningful_default(name: str) -> None:
    """A pass-through of an empty `.env` line gives the service "", not its default."""
    cls = command_of(name).settings_class
    known = settings_env_names(cls)
    assigned, _documented = read_env_file(ENV_EXAMPLE)
    container_env = environment_of(interpolate(SERVICES_IN_COMPOSE[name], filled_env()), assigned)
    for variable, value in container_env.items():
        if value == "":
            field = cls.model_fields[known[variable]]
            assert field.default == "", (
                f"{name}: {variable} is empty but defaults to {field.default!r}"
            )


# ---------------------------------------------------------------- ports, health, dependencies


@pytest.mark.parametrize("name", APP_SERVICES)
def test_container_ports_match_the_services_default_port(name: str) -> None:
    command = command_of(name)
    service = SERVICES_IN_COMPOSE[name]
    if command.subcommand == "migrate":
        assert "expose" not in service and "healthcheck" not in service
        return
    port = command.port_option or command.default_port
    assert port == command.default_port, f"{name}: keep the documented port inside the container"
    assert [str(p) for p in service.get("expose", [])] == [str(port)]
    health_url = re.search(r"http://[^'\"]+", " ".join(healthcheck_command(name)))
    assert health_url, f"{name}: healthcheck does not probe HTTP"
    url = urlsplit(health_url[0])
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", port, "/health")


def test_only_the_proxy_publishes_a_port() -> None:
    """Besides the proxy, only the opt-in observability UIs publish, and only on loopback."""
    published = {
        name: svc["ports"]
        for name, svc in SERVICES_IN_COMPOSE.items()
        if svc.get("ports") and "observability" not in svc.get("profiles", [])
    }
    for name, svc in SERVICES_IN_COMPOSE.items():
        if "observability" in svc.get("profiles", []):
            for port in svc.get("ports", []):
                assert str(interpolate(port, {})).startswith("127.0.0.1:"), (name, port)
    assert list(published) == ["proxy"] and len(published["proxy"]) == 1
    container_port = int(str(interpolate(published["proxy"][0], {})).rsplit(":", 1)[1])
    listen = nginx_server().values("listen")
    assert listen == [[str(container_port)]]


@pytest.mark.parametrize("name", ["gateway", "chat_worker"])
def test_scaled_services_have_no_fixed_name_or_host_port(name: str) -> None:
    service = SERVICES_IN_COMPOSE[name]
    assert "container_name" not in service and "ports" not in service and "hostname" not in service
    if name == "gateway":
        assert service["deploy"]["replicas"] == 2


def test_mock_llm_is_an_opt_in_profile_and_nothing_requires_it() -> None:
    assert SERVICES_IN_COMPOSE["mock_llm"].get("profiles") == ["mock"]
    for name, service in SERVICES_IN_COMPOSE.items():
        for target in depends_on(service):
            target_profiles = SERVICES_IN_COMPOSE[target].get("profiles")
            assert not target_profiles or service.get("profiles") == target_profiles, (
                f"{name} depends on {target}, which only starts with --profile"
            )


def test_depends_on_conditions_are_satisfiable() -> None:
    for name, service in SERVICES_IN_COMPOSE.items():
        for target, options in depends_on(service).items():
            assert target in SERVICES_IN_COMPOSE, f"{name} depends on unknown {target}"
            condition = options.get("condition")
            if condition == "service_healthy":
                assert SERVICES_IN_COMPOSE[target].get("healthcheck", {}).get("test"), (
                    f"{name} waits for {target} to be healthy, but it has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert SERVICES_IN_COMPOSE[target].get("restart") == "no", (
                    f"{target} must be one-shot (restart: 'no') for {name} to wait for it"
                )
            else:
                raise AssertionError(f"{name} → {target}: unexpected condition {condition!r}")


def test_dependencies_have_no_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"dependency cycle: {' → '.join((*path, name))}"
        if name not in done:
            for target in depends_on(SERVICES_IN_COMPOSE[name]):
                visit(target, (*path, name))
            done.add(name)

    for name in SERVICES_IN_COMPOSE:
        visit(name, ())


@pytest.mark.parametrize("name", [n for n in APP_SERVICES if n != "mock_llm"])
def test_services_start_after_migrations_and_healthy_infrastructure(name: str) -> None:
    if command_of(name).subcommand == "migrate":
        assert depends_on(SERVICES_IN_COMPOSE[name]) == {
            "postgres": {"condition": "service_healthy"}
        }
        return
    assert depends_on(SERVICES_IN_COMPOSE[name]) == {
        "migrate": {"condition": "service_completed_successfully"},
        "postgres": {"condition": "service_healthy"},
        "rabbitmq": {"condition": "service_healthy"},
    }


def test_infrastructure_healthchecks_and_data_volumes() -> None:
    assert healthcheck_command("rabbitmq") == ["rabbitmq-diagnostics", "-q", "ping"]
    assert healthcheck_command("postgres")[0] == "pg_isready"
    assert SERVICES_IN_COMPOSE["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert SERVICES_IN_COMPOSE["postgres"]["image"] == "postgres:16"
    for name, mount in (
        ("postgres", "/var/lib/postgresql/data"),
        ("rabbitmq", "/var/lib/rabbitmq"),
    ):
        volume = next(v for v in SERVICES_IN_COMPOSE[name]["volumes"] if v.endswith(f":{mount}"))
        assert volume.split(":")[0] in COMPOSE["volumes"], f"{name} data must be a named volume"


class _HealthServer(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("name", [n for n in APP_SERVICES if n != "migrate"])
def test_http_healthcheck_passes_on_200_and_fails_otherwise(
    name: str, health_server: http.server.ThreadingHTTPServer
) -> None:
    """Runs the healthcheck exactly as Docker would, against a local server on another port."""
    command = healthcheck_command(name)
    assert command[:2] == ["python", "-c"], "the slim image has no curl: probe with Python"
    port = command_of(name).default_port
    script = command[2].replace(f":{port}/", f":{health_server.server_address[1]}/")
    assert script != command[2]
    for status, healthy in ((200, True), (503, False)):
        _HealthServer.status = status
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=20)
        assert (result.returncode == 0) is healthy, f"{name}: status {status} → {result}"


# ---------------------------------------------------------------- files, image


def test_every_referenced_file_exists() -> None:
    for name, service in SERVICES_IN_COMPOSE.items():
        build = service.get("build")
        if build:
            context = (DEPLOY / build["context"]).resolve()
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
            assert (context / ".dockerignore").is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} missing"
        for env_file in service.get("env_file", []):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            required = isinstance(env_file, str) or env_file.get("required", True)
            assert not required or (DEPLOY / path).is_file(), f"{name}: {path} missing"
    assert ENV_EXAMPLE.is_file() and (DEPLOY / "README.md").is_file()


def test_nginx_config_is_mounted_where_nginx_reads_it() -> None:
    volumes = SERVICES_IN_COMPOSE["proxy"]["volumes"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in volumes


DOCKERFILE = parse_dockerfile(DEPLOY / "Dockerfile")


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    assert len(DOCKERFILE) >= 2
    assert all(stage.base == "python:3.11-slim" for stage in DOCKERFILE)
    builder, runtime = DOCKERFILE[0], DOCKERFILE[-1]
    copies_from = [i.args for i in runtime.all("COPY") if i.args.startswith("--from=")]
    assert copies_from and all(args.startswith(f"--from={builder.name} ") for args in copies_from)
    assert not runtime.all("RUN") or not any(
        re.search(r"apt-get install|gcc|build-essential|pip install", i.args)
        for i in runtime.all("RUN")
    ), "the runtime stage installs nothing: it only copies the built venv"


def test_runtime_stage_runs_as_a_non_root_user() -> None:
    runtime = DOCKERFILE[-1]
    users = runtime.all("USER")
    assert users, "the runtime stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(i.args for i in runtime.all("RUN"))
    assert re.search(rf"useradd\b[^&]*(--uid {user}\b|\b{user}$)", created), "USER must exist"
    last_user_index = runtime.instructions.index(users[-1])
    assert not any(i.keyword == "USER" for i in runtime.instructions[last_user_index + 1 :])


def test_entrypoint_is_convoai_and_the_default_command_is_valid() -> None:
    runtime = DOCKERFILE[-1]
    entrypoint = json.loads(runtime.all("ENTRYPOINT")[-1].args)
    assert entrypoint == ["convoai"], "exec form, so signals reach the process"
    command = parse_command(json.loads(runtime.all("CMD")[-1].args))
    assert command.subcommand == "serve"
    venv = next(i.args.split()[-1] for i in runtime.all("COPY") if i.args.startswith("--from="))
    path = " ".join(i.args for i in runtime.all("ENV"))
    assert re.search(rf"PATH={re.escape(venv)}/bin:", path), "the venv's convoai must be on PATH"


def test_build_context_holds_what_the_dockerfile_copies_and_not_the_rest() -> None:
    patterns = read_dockerignore(REPO / ".dockerignore")
    for stage in DOCKERFILE:
        for instruction in stage.all("COPY"):
            if instruction.args.startswith("--from="):
                continue
            *sources, _target = instruction.args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignore_excludes(patterns, source), f"COPY {source}: .dockerignore"
    for excluded in (".venv", ".git", ".env", "services/auth/__pycache__/app.cpython-311.pyc"):
        assert dockerignore_excludes(patterns, excluded), f"{excluded} must stay out of the image"


# ---------------------------------------------------------------- nginx


def nginx_server() -> Directive:
    config = parse_nginx((DEPLOY / "nginx.conf").read_text())
    (http_block,) = [d for d in config if d.name == "http"]
    (server,) = http_block.children("server")
    return server


def nginx_http() -> Directive:
    (http_block,) = [
        d for d in parse_nginx((DEPLOY / "nginx.conf").read_text()) if d.name == "http"
    ]
    return http_block


def upstream_of(location: Directive) -> str:
    server = nginx_server()
    variables = {args[0]: args[1] for args in server.values("set")}
    (proxy_pass,) = location.values("proxy_pass")
    target = proxy_pass[0].removeprefix("http://")
    return variables.get(target, target)


ROUTES = {
    "/ws": "gateway",
    "/ws?token=abc": "gateway",
    "/auth/token": "auth",
    "/auth/me": "auth",
    "/users/": "auth",
    "/users/abc123": "auth",
    "/api/v1/analytics/summary": "analytics_consumer",
    "/conversations/": "gateway",
    "/assistants/": "gateway",
    "/": "gateway",
    "/health": "gateway",
}


@pytest.mark.parametrize(("uri", "service"), ROUTES.items())
def test_nginx_routes_each_path_to_its_service(uri: str, service: str) -> None:
    location = match_location(nginx_server(), uri.split("?")[0])
    assert upstream_of(location) == f"{service}:{SERVICES[service].default_port}"


def test_nginx_upgrades_websockets_on_ws() -> None:
    location = match_location(nginx_server(), "/ws")
    headers = {args[0].lower(): args[1] for args in location.values("proxy_set_header")}
    assert headers.get("upgrade") == "$http_upgrade"
    (mapping,) = nginx_http().children("map")
    assert mapping.args == ["$http_upgrade", headers["connection"]]
    assert {d.name: d.args[0] for d in mapping.block or []} == {"default": "upgrade", "": "close"}
    version = location.values("proxy_http_version") or nginx_server().values("proxy_http_version")
    assert version == [["1.1"]], "WebSocket upgrades need HTTP/1.1 to the upstream"
    timeout = location.values("proxy_read_timeout")
    assert timeout and timeout[0][0] in ("1h", "3600s", "3600"), (
        "idle sockets must not be cut at 60 s"
    )


def test_locations_that_set_headers_repeat_the_forwarding_headers() -> None:
    """nginx drops inherited `proxy_set_header`s in a location that sets any of its own."""
    server = nginx_server()
    inherited = {args[0].lower() for args in server.values("proxy_set_header")}
    assert {"host", "x-forwarded-for", "x-forwarded-proto"} <= inherited
    for location in server.children("location"):
        own = {args[0].lower() for args in location.values("proxy_set_header")}
        if own:
            assert inherited - {"connection"} <= own, (
                f"location {location.args}: lost {inherited - own}"
            )


def test_nginx_resolves_compose_names_at_request_time() -> None:
    server = nginx_server()
    uses_variables = any(
        args[0].startswith("http://$")
        for loc in server.children("location")
        for args in loc.values("proxy_pass")
    )
    assert uses_variables, "a static upstream resolves `gateway` once and misses scaled replicas"
    assert nginx_http().values("resolver")[0][0] == "127.0.0.11", "Docker's embedded DNS"
    for args in server.values("set"):
        host = args[1].split(":")[0]
        assert host in SERVICES_IN_COMPOSE, f"{args}: not a compose service"


def test_nginx_access_log_never_records_query_strings() -> None:
    """`/ws?token=...` carries an access token; the log format must not include it."""
    http_block = nginx_http()
    formats = {args[0]: " ".join(args[1:]) for args in http_block.values("log_format")}
    access = http_block.values("access_log")
    assert access and all(len(args) >= 2 and args[1] in formats for args in access)
    for fmt in formats.values():
        assert not re.search(r"\$(request|request_uri|args|query_string|arg_\w+)\b", fmt), fmt


def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if nginx is None:
        pytest.skip(
            "nginx is not installed (apt-get install nginx-light); text checks above still ran"
        )
    config = tmp_path / "nginx.conf"
    config.write_text((DEPLOY / "nginx.conf").read_text())
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-q",
            "-p",
            str(tmp_path),
            "-c",
            str(config),
            "-g",
            f"pid {tmp_path}/nginx.pid;",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    """`docker compose config` validates against the Compose schema; it needs no daemon."""
    cli = next(
        (
            candidate
            for candidate in (["docker", "compose"], ["docker-compose"])
            if shutil.which(candidate[0])
            and subprocess.run([*candidate, "version"], capture_output=True, timeout=30).returncode
            == 0
        ),
        None,
    )
    if cli is None:
        pytest.skip("no Docker Compose CLI (docker compose plugin or docker-compose) installed")
    compose_file = COMPOSE_FILE
    if cli == ["docker-compose"]:
        # Compose v1 predates the top-level `name`; everything else it validates as v2 does.
        compose_file = tmp_path / "compose.yaml"
        compose_file.write_text(re.sub(r"(?m)^name: .*\n", "", COMPOSE_FILE.read_text()))
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in filled_env().items()))
    base = [
        *cli,
        "--project-directory",
        str(DEPLOY),
        "--env-file",
        str(env_file),
        "-f",
        str(compose_file),
    ]
    for profile in ([], ["--profile", "mock"], ["--profile", "observability"]):
        result = subprocess.run(
            [*base, *profile, "config", "--quiet"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
    env_file.write_text("")
    refused = subprocess.run(
        [*base, "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    assert any(secret in refused.stderr + refused.stdout for secret in REQUIRED_SECRETS)


def test_only_the_proxy_address_is_trusted_for_forwarded_headers() -> None:
    """A trusted `*` lets any peer name its own client address (issue 11, item 9)."""
    proxy_address = SERVICES_IN_COMPOSE["proxy"]["networks"]["default"]["ipv4_address"]
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(proxy_address) in ipaddress.ip_network(subnet)
    platform_services = [
        name
        for name in APP_SERVICES
        if "CONVOAI_JWT_SECRET" in environment_of(SERVICES_IN_COMPOSE[name])
    ]
    assert {"auth", "gateway", "analytics_consumer"} <= set(platform_services)
    for name in platform_services:
        trusted = environment_of(SERVICES_IN_COMPOSE[name]).get("CONVOAI_TRUSTED_PROXIES")
        assert trusted == proxy_address, f"{name} trusts {trusted!r}"


def test_nginx_forwards_the_peer_address_not_the_clients_header() -> None:
    server = nginx_server()
    for directive in [server, *server.children("location")]:
        for args in directive.values("proxy_set_header"):
            if args[0].lower() == "x-forwarded-for":
                assert args[1] == "$remote_addr", f"{directive.args}: {args}"
