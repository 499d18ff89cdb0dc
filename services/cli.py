"""`convoai`: run, migrate and administer the platform."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
import time
from types import FrameType

import asyncpg
import uvicorn
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from services.registry import MIGRATED_SCHEMAS, SERVICES, ServiceSpec
from shared.broker import BrokerUnavailable, wait_for_broker
from shared.db import asyncpg_dsn
from shared.logging import configure_logging, redact_url
from shared.migrations import upgrade_to_head
from shared.settings import ServiceSettings
from shared.tracing import configure_tracing

try:  # not on Windows (pyproject installs it everywhere else)
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

log = logging.getLogger("convoai")

EXIT_INVALID_SETTINGS = 2
EXIT_DEPENDENCY_UNAVAILABLE = 3


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL did not answer within the start-up budget."""


async def wait_for_database(
    database_url: str, timeout_s: float, *, server_only: bool = False
) -> None:
    """Retry until PostgreSQL answers; `server_only` checks the server, not the database."""
    url = make_url(database_url)
    dsn = asyncpg_dsn(database_url, "postgres" if server_only else None)
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except asyncpg.InvalidCatalogNameError:
            raise DatabaseUnavailable(
                f"database {url.database!r} does not exist at {redact_url(database_url)}; "
                "run `convoai migrate` first"
            ) from None
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if time.monotonic() >= deadline:
                raise DatabaseUnavailable(
                    f"PostgreSQL unreachable at {redact_url(database_url)} after {attempt} "
                    f"attempts ({type(exc).__name__}: {exc})"
                ) from None
            log.warning(
                "database unreachable, retrying",
                extra={"url": redact_url(database_url), "attempt": attempt, "error": str(exc)},
            )
            await asyncio.sleep(1.0)
        else:
            await conn.close()
            return


GC_YOUNG_OBJECTS = 20_000
"""Allocations (less deallocations) between two collections of the youngest generation."""


class GracefulServer(uvicorn.Server):
    """Exits 0 after a signal-initiated graceful shutdown (uvicorn re-raises the signal)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


async def _serve(spec: ServiceSpec, settings: object, host: str, port: int) -> int:
    if isinstance(settings, ServiceSettings):
        try:
            await wait_for_broker(settings.amqp_url, settings.broker_connect_timeout_s)
            await wait_for_database(settings.database_url, settings.broker_connect_timeout_s)
        except (BrokerUnavailable, DatabaseUnavailable) as exc:
            print(f"convoai serve {spec.name}: {exc}", file=sys.stderr)
            return EXIT_DEPENDENCY_UNAVAILABLE
    app = spec.create_app(settings)  # type: ignore[arg-type]
    # What importing and building the app made lives as long as the process: kept out of every
    # garbage collection from now on (each full collection walked those hundreds of thousands
    # of objects again). And a young generation of 20 000 objects rather than 700: a busy
    # process allocates and frees thousands per millisecond, almost all freed by reference
    # counting. Opening 6 000 sockets took 1.03 ms of the gateway's CPU each, 0.33 of it in
    # 1 300 collections (8 full); with both, 0.73 ms and 45 collections (gc.callbacks timing).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_OBJECTS, *gc.get_threshold()[1:])
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        lifespan="on",
        proxy_headers=True,
        forwarded_allow_ips=getattr(settings, "trusted_proxies", "127.0.0.1"),
        access_log=spec.access_log,
        timeout_graceful_shutdown=15,
        ws_max_size=1024 * 1024,
        # permessage-deflate keeps zlib state for each socket's lifetime: half of an idle
        # authenticated socket's memory (82 -> 42 KiB each over 10 000 sockets,
        # bench/chat_cost.py) to save bytes on frames of a few hundred bytes of JSON.
        ws_per_message_deflate=False,
    )
    server = GracefulServer(config)
    await server.serve()
    return 0 if server.started else 1


def cmd_serve(args: argparse.Namespace) -> int:
    spec = SERVICES[args.service]
    try:
        settings = spec.load_settings(instance_id=args.instance_id)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        print(f"convoai serve {spec.name}: invalid settings: {problems}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    level = getattr(settings, "log_level", "INFO")
    fmt = getattr(settings, "log_format", "kv")
    configure_logging(spec.name, level, fmt)
    configure_tracing(spec.name, getattr(settings, "instance_id", None))
    # uvloop: the services spend much of their CPU in socket I/O and event-loop bookkeeping,
    # which uvloop does in C (measured: see README, "Benchmarks").
    with asyncio.Runner(loop_factory=uvloop.new_event_loop if uvloop else None) as runner:
        return runner.run(_serve(spec, settings, args.host, args.port or spec.default_port))


def cmd_migrate(_args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    configure_logging("migrate", settings.log_level, settings.log_format)
    try:
        asyncio.run(
            wait_for_database(
                settings.database_url, settings.broker_connect_timeout_s, server_only=True
            )
        )
    except DatabaseUnavailable as exc:
        print(f"convoai migrate: {exc}", file=sys.stderr)
        return EXIT_DEPENDENCY_UNAVAILABLE
    asyncio.run(upgrade_to_head(settings.database_url, MIGRATED_SCHEMAS))
    print(f"migrated schemas: {', '.join(MIGRATED_SCHEMAS)}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from services.runner import run_local_stack

    return run_local_stack(
        workers=args.workers, host=args.host, port_offset=args.port_offset, stack_name=args.stack
    )


def cmd_create_admin(args: argparse.Namespace) -> int:
    from services.auth.bootstrap import create_admin_command

    return create_admin_command(
        args.username, args.email, args.password, password_stdin=args.password_stdin
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convoai", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole platform locally (Ctrl-C stops it)")
    up.add_argument("--workers", type=int, default=2, help="chat worker processes (default 2)")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--port-offset",
        type=int,
        default=0,
        help="shift every port (gateway 8000+N, auth 8001+N, …) to run beside another stack; "
        "a non-zero offset also gives the stack its own broker namespace and database "
        "(suffix pN, or --stack)",
    )
    up.add_argument(
        "--stack",
        default=None,
        metavar="NAME",
        help="name of a separate stack: namespace <ns>-NAME and database <db>_NAME "
        "(default: pN for --port-offset N, none for offset 0)",
    )
    up.set_defaults(func=cmd_up)

    serve = sub.add_parser("serve", help="run one process")
    serve.add_argument("service", choices=sorted(SERVICES))
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: the service's own port")
    serve.add_argument("--instance-id", default=None, help="name of this replica (default: random)")
    serve.set_defaults(func=cmd_serve)

    migrate = sub.add_parser("migrate", help="create the database if needed and apply migrations")
    migrate.set_defaults(func=cmd_migrate)

    create_admin = sub.add_parser(
        "create-admin",
        help="create an admin account (arguments or CONVOAI_ADMIN_* env; never prompts)",
    )
    create_admin.add_argument("--username", default=None)
    create_admin.add_argument("--email", default=None)
    create_admin.add_argument(
        "--password", default=None, help="visible to other local users; prefer --password-stdin"
    )
    create_admin.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first stdin line"
    )
    create_admin.set_defaults(func=cmd_create_admin)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
