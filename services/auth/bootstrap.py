"""The first admin: from settings at start-up (when no admin exists) or from `convoai create-admin`.

Never by editing the database by hand (README, quick start). Both paths go through
`Accounts.register`, so the admin obeys the same username/email/password rules and
`user.registered` is published.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass

from pydantic import ValidationError

from services.auth.errors import AccountError, DuplicateAccount, PasswordPolicyViolation
from services.auth.schemas import RegisterRequest
from services.auth.service import AccountsFactory
from services.auth.settings import AuthSettings
from shared.broker import BrokerUnavailable, wait_for_broker
from shared.logging import configure_logging
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from shared.security import Role

log = logging.getLogger(__name__)

# Two replicas starting together must not both create "the first" admin.
_BOOTSTRAP_LOCK = "auth:first-admin"

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_DEPENDENCY_UNAVAILABLE = 3


class AdminBootstrapError(RuntimeError):
    """The configured admin cannot be created; the message says what to fix."""


@dataclass(frozen=True)
class AdminCredentials:
    username: str
    email: str
    password: str

    def validated(self) -> RegisterRequest:
        try:
            return RegisterRequest(username=self.username, email=self.email, password=self.password)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'admin'}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise AdminBootstrapError(f"invalid admin account: {problems}") from None


def configured_admin(settings: AuthSettings) -> AdminCredentials | None:
    """The CONVOAI_ADMIN_* account, None when none is configured; half a configuration fails."""
    values = (settings.admin_username, settings.admin_email, settings.admin_password)
    if not any(values):
        return None
    if not all(values):
        raise AdminBootstrapError(
            "CONVOAI_ADMIN_USERNAME, CONVOAI_ADMIN_EMAIL and CONVOAI_ADMIN_PASSWORD "
            "must be set together"
        )
    assert settings.admin_username and settings.admin_email and settings.admin_password
    return AdminCredentials(settings.admin_username, settings.admin_email, settings.admin_password)


async def create_admin(accounts: AccountsFactory, credentials: AdminCredentials) -> str:
    """Create an admin account unconditionally; return its id."""
    request = credentials.validated()
    try:
        async with accounts.unit_of_work() as uow:
            user = await uow.register(
                username=request.username,
                email=str(request.email),
                password=request.password,
                full_name=None,
                client=None,
                roles=[Role.ADMIN],
            )
    except DuplicateAccount as exc:
        raise AdminBootstrapError(f"cannot create admin: {exc.field} already registered") from None
    except PasswordPolicyViolation as exc:
        raise AdminBootstrapError(f"invalid admin account: {exc}") from None
    log.info("admin created", extra={"user_id": user.id})
    return user.id


async def ensure_first_admin(accounts: AccountsFactory, settings: AuthSettings) -> str | None:
    """At start-up: create the configured admin if no active admin exists; return its id."""
    credentials = configured_admin(settings)
    if credentials is None:
        return None
    request = credentials.validated()
    try:
        async with accounts.unit_of_work() as uow:
            await uow.lock_named(_BOOTSTRAP_LOCK)
            if await uow.any_active_admin():
                log.info("an admin exists; CONVOAI_ADMIN_* not used")
                return None
            user = await uow.register(
                username=request.username,
                email=str(request.email),
                password=request.password,
                full_name=None,
                client=None,
                roles=[Role.ADMIN],
            )
    except DuplicateAccount as exc:
        raise AdminBootstrapError(
            f"cannot create the first admin: {exc.field} already registered to a non-admin "
            "account; choose another CONVOAI_ADMIN_USERNAME/EMAIL or use `convoai create-admin`"
        ) from None
    except AccountError as exc:
        raise AdminBootstrapError(f"cannot create the first admin: {exc}") from None
    log.info("first admin created", extra={"user_id": user.id})
    return user.id


async def _create_admin_with_runtime(settings: AuthSettings, credentials: AdminCredentials) -> str:
    # Imported here: the CLI module imports this one, and the app module is the composition root.
    from services.auth.app import SERVICE, build_accounts
    from services.auth.models import outbox as outbox_table

    await wait_for_broker(settings.amqp_url, settings.broker_connect_timeout_s)
    runtime = ServiceRuntime.build(SERVICE, settings, db_pool_size=1)
    await runtime.start()
    try:
        outbox = Outbox(outbox_table, runtime.sessions, runtime.publisher)
        user_id = await create_admin(build_accounts(settings, outbox), credentials)
        await outbox.drain_background()
        return user_id
    finally:
        await runtime.stop()


def create_admin_command(
    username: str | None, email: str | None, password: str | None, *, password_stdin: bool
) -> int:
    """`convoai create-admin`: arguments first, CONVOAI_ADMIN_* otherwise; never prompts."""
    settings = AuthSettings()
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    credentials = AdminCredentials(
        username or settings.admin_username or "",
        email or settings.admin_email or "",
        password or settings.admin_password or "",
    )
    missing = [
        name
        for name, value in (
            ("username", credentials.username),
            ("email", credentials.email),
            ("password", credentials.password),
        )
        if not value
    ]
    if missing:
        print(
            f"convoai create-admin: missing {', '.join(missing)} "
            "(pass --username/--email/--password or --password-stdin, "
            "or set CONVOAI_ADMIN_USERNAME/EMAIL/PASSWORD)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    configure_logging("create-admin", settings.log_level, settings.log_format)
    try:
        user_id = asyncio.run(_create_admin_with_runtime(settings, credentials))
    except AdminBootstrapError as exc:
        print(f"convoai create-admin: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (BrokerUnavailable, OSError) as exc:
        print(f"convoai create-admin: {exc}", file=sys.stderr)
        return EXIT_DEPENDENCY_UNAVAILABLE
    print(f"admin created: {credentials.username} (id {user_id})")
    return 0
