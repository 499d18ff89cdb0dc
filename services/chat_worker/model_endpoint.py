"""What the configured model endpoint answers: checked at start (one clear log line naming the
URL, the models found or the likely fix) and on `/ready`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import openai

from services.chat_worker.llm import is_timeout
from services.chat_worker.settings import ChatWorkerSettings
from shared.health import NotReady

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
PROBE_MAX_AGE_S = 10.0
"""`/ready` probes again when the last answer is older than this."""


class ModelEndpointUnavailable(NotReady):
    """The model endpoint cannot serve replies; the message names the URL and the likely fix."""


@dataclass
class EndpointState:
    ok: bool
    summary: str
    """One line a person can act on: what was found at which URL, or what to fix."""
    models: list[str] = field(default_factory=list)
    checked_at: float = 0.0


def _missing_v1(base_url: str) -> bool:
    return not urlsplit(base_url).path.rstrip("/").endswith("/v1")


def describe_failure(exc: BaseException, settings: ChatWorkerSettings) -> str:
    """The likely cause of a failed `GET /models`, naming the URL and the setting to change."""
    url = settings.llm_base_url
    if is_timeout(exc):
        return f"model endpoint {url} did not answer within {PROBE_TIMEOUT_S:.0f}s"
    if isinstance(exc, openai.APIConnectionError):
        return (
            f"model endpoint unreachable at {url} ({exc.__cause__ or exc}); is the model server "
            "running, and is CONVOAI_LLM_BASE_URL right?"
        )
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return (
            f"model endpoint {url} refused the API key ({exc.status_code}); "
            "check CONVOAI_LLM_API_KEY"
        )
    if isinstance(exc, openai.NotFoundError):
        if _missing_v1(url):
            fixed = url.rstrip("/") + "/v1"
            return (
                f"no OpenAI API at {url} (GET /models answered 404): the base URL is probably "
                f"missing its /v1; try CONVOAI_LLM_BASE_URL={fixed}"
            )
        return f"no OpenAI API at {url} (GET /models answered 404); check CONVOAI_LLM_BASE_URL"
    if isinstance(exc, openai.APIStatusError):
        return f"model endpoint {url} answered {exc.status_code} to GET /models"
    return f"model endpoint {url} could not be checked: {type(exc).__name__}: {exc}"


class ModelEndpoint:
    """Probes `GET <base_url>/models` and remembers the answer for `/ready`."""

    def __init__(self, client: openai.AsyncOpenAI, settings: ChatWorkerSettings) -> None:
        self.client = client
        self.settings = settings
        self.state = EndpointState(ok=False, summary="not checked yet")
        self._lock = asyncio.Lock()

    async def probe(self) -> EndpointState:
        async with self._lock:
            try:
                page = await self.client.models.list(timeout=PROBE_TIMEOUT_S)
            except Exception as exc:
                state = EndpointState(ok=False, summary=describe_failure(exc, self.settings))
            else:
                models = sorted(model.id for model in page.data)
                state = EndpointState(ok=True, summary=self._found(models), models=models)
            state.checked_at = time.monotonic()
            self.state = state
            return state

    def _found(self, models: list[str]) -> str:
        url, default = self.settings.llm_base_url, self.settings.default_model
        shown = ", ".join(models[:10]) + (f", … ({len(models)} in all)" if len(models) > 10 else "")
        if models and default not in models:
            return (
                f"model endpoint {url} answers, but does not list the default model {default!r} "
                f"(it lists: {shown}); set CONVOAI_DEFAULT_MODEL to one of them"
            )
        return f"model endpoint {url} answers; models: {shown or 'none listed'}"

    async def log_at_start(self) -> None:
        state = await self.probe()
        default_listed = not state.models or self.settings.default_model in state.models
        if state.ok and default_listed:
            log.info(state.summary, extra={"url": self.settings.llm_base_url})
        else:
            log.warning(state.summary, extra={"url": self.settings.llm_base_url})

    async def check_ready(self) -> None:
        """For `/ready`: fails with the URL and the reason while the endpoint cannot answer."""
        state = self.state
        if time.monotonic() - state.checked_at > PROBE_MAX_AGE_S:
            state = await self.probe()
        if not state.ok:
            raise ModelEndpointUnavailable(state.summary)
