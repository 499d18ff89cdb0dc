"""HTTP edge of the auth service: each request is one unit of work (`Accounts`)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordRequestForm

from services.auth.errors import (
    AccountError,
    DuplicateAccount,
    LastAdmin,
    PasswordPolicyViolation,
    UserNotFound,
)
from services.auth.login import (
    ClientInfo,
    LoginRefusal,
    LoginRefused,
    PasswordChangeRefused,
    RefreshRefusal,
    RefreshRefused,
)
from services.auth.models import User
from services.auth.schemas import (
    MeUpdate,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
    UserOut,
    UserUpdate,
)
from services.auth.service import AccountsFactory, UserChanges
from shared.input_guards import unprocessable
from shared.pagination import Limit, Page, Skip
from shared.rate_limit import RateLimiter, retry_after_header
from shared.security import CurrentPrincipal, Role

log = logging.getLogger(__name__)

MAX_USER_AGENT_LENGTH = 300
LOCKED_DETAIL = "Too many failed login attempts; try again later"

router = APIRouter()


def get_accounts(request: Request) -> AccountsFactory:
    factory: AccountsFactory = request.app.state.accounts
    return factory


AccountsDep = Annotated[AccountsFactory, Depends(get_accounts)]


def get_client(request: Request) -> ClientInfo:
    user_agent = request.headers.get("user-agent")
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=user_agent[:MAX_USER_AGENT_LENGTH] if user_agent else None,
    )


Client = Annotated[ClientInfo, Depends(get_client)]


def _too_many(retry_after_s: float, detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=detail,
        headers={"Retry-After": retry_after_header(retry_after_s)},
    )


def _rate_limited(limiter_name: str) -> Any:
    def _check(request: Request, client: Client) -> None:
        limiter: RateLimiter = getattr(request.app.state, limiter_name)
        wait_s = limiter.acquire(client.ip or "unknown")
        if wait_s:
            log.warning("rate limited", extra={"limiter": limiter_name, "ip": client.ip})
            raise _too_many(wait_s, "Too many requests from this address; try again later")

    return Depends(_check)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def get_current_user(principal: CurrentPrincipal, accounts: AccountsDep) -> User:
    """The caller's account as it is now: a valid token of a deleted or disabled user is 401."""
    async with accounts.unit_of_work() as uow:
        user = await uow.active_user(principal.user_id)
    if user is None:
        raise _unauthorized("Invalid or expired token")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def _require_roles(*roles: Role) -> Any:
    """Roles as the database holds them now, not as a still-valid token remembers them."""

    async def _check(user: CurrentUser) -> User:
        if not set(user.roles) & {r.value for r in roles}:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Insufficient role")
        return user

    return Depends(_check)


AdminOrManager = Annotated[User, _require_roles(Role.ADMIN, Role.MANAGER)]
Admin = Annotated[User, _require_roles(Role.ADMIN)]


# --- registration and tokens ------------------------------------------------------------------


@router.post(
    "/auth/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    dependencies=[_rate_limited("register_limiter")],
)
@router.post(
    "/users/",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    dependencies=[_rate_limited("register_limiter")],
)
async def register(body: RegisterRequest, accounts: AccountsDep, client: Client) -> User:
    async with accounts.unit_of_work() as uow:
        user = await uow.register(
            username=body.username,
            email=str(body.email),
            password=body.password,
            full_name=body.full_name,
            client=client,
        )
    log.info("user registered", extra={"user_id": user.id})
    return user


@router.post(
    "/auth/token", response_model=TokenResponse, dependencies=[_rate_limited("login_limiter")]
)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], accounts: AccountsDep, client: Client
) -> TokenResponse:
    async with accounts.unit_of_work() as uow:
        outcome = await uow.logins.login(form.username.strip(), form.password, client)
    if isinstance(outcome, LoginRefused):
        log.info("login refused", extra={"reason": outcome.reason.value, "ip": client.ip})
        if outcome.reason is LoginRefusal.LOCKED:
            raise _too_many(outcome.retry_after_s, LOCKED_DETAIL)
        if outcome.reason is LoginRefusal.INACTIVE:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Account is disabled")
        raise _unauthorized("Incorrect username or password")
    log.info("login succeeded", extra={"ip": client.ip})
    return TokenResponse(
        access_token=outcome.access_token,
        expires_in=outcome.expires_in,
        refresh_token=outcome.refresh_token,
    )


@router.post("/auth/refresh", response_model=TokenResponse)
async def refresh(body: RefreshRequest, accounts: AccountsDep) -> TokenResponse:
    async with accounts.unit_of_work() as uow:
        outcome = await uow.logins.refresh(body.refresh_token)
    if isinstance(outcome, RefreshRefused):
        if outcome.reason is RefreshRefusal.REUSED:
            log.warning("refresh token reused; its family is revoked")
            raise _unauthorized("Refresh token reuse detected; the session has been revoked")
        raise _unauthorized("Invalid or expired refresh token")
    return TokenResponse(
        access_token=outcome.access_token,
        expires_in=outcome.expires_in,
        refresh_token=outcome.refresh_token,
    )


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(body: RefreshRequest, accounts: AccountsDep, client: Client) -> Response:
    async with accounts.unit_of_work() as uow:
        known = await uow.logins.logout(body.refresh_token, client)
    if not known:
        raise _unauthorized("Invalid refresh token")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/auth/logout-all", status_code=status.HTTP_204_NO_CONTENT)
async def logout_everywhere(user: CurrentUser, accounts: AccountsDep) -> Response:
    """Log out everywhere: end every session of the caller, this one included, on every service
    within about a second. Every refresh token of the account is revoked at once; access tokens
    issued before now are refused (REST 401) and open chat sockets closed (WebSocket close
    4001) by the gateways and analytics. Log in again for a new session."""
    async with accounts.unit_of_work() as uow:
        await uow.log_out_everywhere(user.id)
    log.info("logged out everywhere", extra={"user_id": user.id})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- the caller's own account -----------------------------------------------------------------


@router.get("/auth/me", response_model=UserOut)
async def read_me(user: CurrentUser) -> User:
    return user


@router.patch("/auth/me", response_model=UserOut)
async def update_me(body: MeUpdate, user: CurrentUser, accounts: AccountsDep) -> User:
    async with accounts.unit_of_work() as uow:
        outcome = await uow.update_me(
            user.id,
            full_name=body.full_name,
            new_password=body.password,
            current_password=body.current_password,
        )
    if isinstance(outcome, PasswordChangeRefused):
        if outcome.retry_after_s:
            raise _too_many(outcome.retry_after_s, LOCKED_DETAIL)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="Current password is incorrect")
    return outcome


# --- administration ---------------------------------------------------------------------------


@router.get("/users/", response_model=Page[UserOut])
async def list_users(
    _caller: AdminOrManager,
    accounts: AccountsDep,
    q: Annotated[str | None, Query(max_length=100)] = None,
    role: Role | None = None,
    is_active: bool | None = None,
    skip: Skip = 0,
    limit: Limit = 20,
) -> Page[UserOut]:
    async with accounts.unit_of_work() as uow:
        users, total = await uow.search_users(
            q=q, role=role, is_active=is_active, skip=skip, limit=limit
        )
    return Page(
        items=[UserOut.model_validate(u) for u in users], total=total, skip=skip, limit=limit
    )


@router.get("/users/{user_id}", response_model=UserOut)
async def read_user(user_id: str, _caller: AdminOrManager, accounts: AccountsDep) -> User:
    async with accounts.unit_of_work() as uow:
        return await uow.get_user(user_id)


@router.patch("/users/{user_id}", response_model=UserOut)
async def update_user(user_id: str, body: UserUpdate, caller: Admin, accounts: AccountsDep) -> User:
    changes = UserChanges(full_name=body.full_name, roles=body.roles, is_active=body.is_active)
    async with accounts.unit_of_work() as uow:
        user = await uow.update_user(user_id, changes, actor_id=caller.id)
    log.info("user updated", extra={"user_id": user.id, "actor_id": caller.id})
    return user


@router.post("/users/{user_id}/unlock", status_code=status.HTTP_204_NO_CONTENT)
async def unlock_user(user_id: str, caller: Admin, accounts: AccountsDep) -> Response:
    """Unlock an account (admin): forget its failed logins from every address, so a lockout
    (429 with `Retry-After` at `POST /auth/token`) ends at once. 204; 404 for an unknown user."""
    async with accounts.unit_of_work() as uow:
        await uow.unlock(user_id)
    log.info("user unlocked", extra={"user_id": user_id, "actor_id": caller.id})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/users/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_user(user_id: str, caller: Admin, accounts: AccountsDep) -> Response:
    async with accounts.unit_of_work() as uow:
        await uow.delete_user(user_id, actor_id=caller.id)
    log.info("user deleted", extra={"user_id": user_id, "actor_id": caller.id})
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_ERROR_STATUS: dict[type[AccountError], int] = {
    DuplicateAccount: status.HTTP_409_CONFLICT,
    UserNotFound: status.HTTP_404_NOT_FOUND,
    LastAdmin: status.HTTP_409_CONFLICT,
    PasswordPolicyViolation: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


async def account_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """Rule violations from the service, as `{"detail": ...}` with their status."""
    code = next(
        (c for kind, c in _ERROR_STATUS.items() if isinstance(exc, kind)),
        status.HTTP_400_BAD_REQUEST,
    )
    if code == status.HTTP_422_UNPROCESSABLE_CONTENT:
        return unprocessable(str(exc))
    return JSONResponse({"detail": str(exc)}, status_code=code)
