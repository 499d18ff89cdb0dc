"""Which models a caller may name (issue 11, item 12): an allow-list from the settings or from
the model server's `GET /models`, narrowed per role; admins may use every allowed model.

A refused model is a REST 400 and a WebSocket `error` frame with code `model_not_allowed`
(`errors.ModelNotAllowed`), and a 404 `model_not_found` on the OpenAI-compatible API; `GET
/v1/models` lists only what its caller may use. Conversations without a model get the chat
worker's default, which is not checked here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence

import httpx

from services.gateway.errors import ModelNotAllowed
from shared.logging import redact_url
from shared.security import Role

log = logging.getLogger(__name__)

ANONYMOUS_ROLE = "anonymous"
"""What `role_models` calls an anonymous socket, which has no roles."""
FETCH_TIMEOUT_S = 3.0


class ModelAccess:
    """The allow-list and its per-role narrowing; `serve` replaces the list with the model
    server's."""

    def __init__(self, configured: Sequence[str], role_models: Mapping[str, Sequence[str]]):
        self._configured = tuple(dict.fromkeys(configured))
        self._served: tuple[str, ...] | None = None
        self._role_models = {role: frozenset(models) for role, models in role_models.items()}

    @property
    def allowed(self) -> tuple[str, ...]:
        """Every model anyone may use: the model server's list once read, else the settings'."""
        return self._configured if self._served is None else self._served

    def serve(self, models: Sequence[str]) -> None:
        self._served = tuple(dict.fromkeys(models))

    def usable_by(self, roles: Collection[str]) -> list[str]:
        """The allowed models a caller with `roles` may use, in the allow-list's order."""
        if Role.ADMIN in roles:
            return list(self.allowed)
        permitted: set[str] = set()
        for role in roles or (ANONYMOUS_ROLE,):
            limit = self._role_models.get(role)
            if limit is None:
                return list(self.allowed)
            permitted |= limit
        return [m for m in self.allowed if m in permitted]

    def check(self, model: str | None, roles: Collection[str]) -> None:
        """Refuse `model` unless a caller with `roles` may use it (None: the default model)."""
        if model is None:
            return
        usable = self.usable_by(roles)
        if model not in usable:
            raise ModelNotAllowed(model, frozenset(usable))


class ServedModels:
    """Keeps a `ModelAccess` in step with the model server's `GET <base URL>/models`."""

    def __init__(self, access: ModelAccess, base_url: str, api_key: str, refresh_s: float):
        self._access = access
        self._url = base_url.rstrip("/") + "/models"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._refresh_s = refresh_s
        self._failing = False

    async def refresh(self) -> bool:
        """Read the server's list into the allow-list; False (and the list unchanged) when the
        server cannot be reached or answers something else than a model list."""
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as client:
                response = await client.get(self._url, headers=self._headers)
            response.raise_for_status()
            models = [str(entry["id"]) for entry in response.json()["data"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            if not self._failing:
                # One line when it starts failing, not one per refresh.
                log.warning(
                    "model list not read; keeping the allow-list as it is",
                    extra={
                        "url": redact_url(self._url),
                        "error": repr(exc),
                        "allowed": self._access.allowed,
                    },
                )
            self._failing = True
            return False
        if self._failing or tuple(dict.fromkeys(models)) != self._access.allowed:
            log.info("model list read", extra={"url": redact_url(self._url), "models": models})
        self._failing = False
        self._access.serve(models)
        return True

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()
