"""What each door of the gateway asks of the budget ledger for one request: which subjects are
charged, the default rate, and the worst case to reserve (services/budgets/admission.py)."""

from __future__ import annotations

from dataclasses import dataclass

from services.budgets.admission import Admission, chat_prompt_estimate, prompt_estimate
from services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class AdmissionPolicy:
    prices_json: str
    """The price table as the admission clause reads it (`PriceTable.as_sql_json`)."""
    default_model: str
    messages_per_minute: int
    anonymous_messages_per_minute: int
    api_requests_per_minute: int
    context_budget_tokens: int
    max_reply_tokens: int | None
    max_reply_tokens_cap: int
    api_default_reply_tokens: int

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> AdmissionPolicy:
        return cls(
            prices_json=settings.price_table().as_sql_json(),
            default_model=settings.default_model,
            messages_per_minute=settings.messages_per_minute,
            anonymous_messages_per_minute=settings.anonymous_messages_per_minute,
            api_requests_per_minute=settings.api_requests_per_minute,
            context_budget_tokens=settings.context_budget_tokens,
            max_reply_tokens=settings.max_reply_tokens,
            max_reply_tokens_cap=settings.max_reply_tokens_cap,
            api_default_reply_tokens=settings.api_default_max_tokens,
        )

    def reply_tokens(self, requested: int | None) -> int:
        """The most a reply may use: what the worker sends the model as `max_tokens` (the
        request's own, else `max_reply_tokens`, never above the cap), or when that is unset the
        API's default. A `/v1` request stores this with its conversation, so the model is held
        to exactly what was reserved; a chat reply is, when `max_reply_tokens` is set."""
        limit = requested or self.max_reply_tokens or self.api_default_reply_tokens
        return min(limit, self.max_reply_tokens_cap)

    def chat_message(self, subject_id: str, content: str, *, anonymous: bool) -> Admission:
        """A chat message (WebSocket or REST): charged to its user, or for an anonymous socket
        to its client address, at the chat's message rate."""
        return Admission(
            user_id=subject_id,
            key_id=None,
            default_requests_per_minute=(
                self.anonymous_messages_per_minute if anonymous else self.messages_per_minute
            ),
            prompt_tokens=chat_prompt_estimate(len(content), self.context_budget_tokens),
            reply_tokens=self.reply_tokens(None),
        )

    def api_request(
        self, user_id: str, key_id: str | None, chars: int, messages: int, reply_tokens: int
    ) -> Admission:
        """A `/v1/chat/completions` request: the whole prompt is in it; `reply_tokens` from
        `reply_tokens(max_tokens)`."""
        return Admission(
            user_id=user_id,
            key_id=key_id,
            default_requests_per_minute=self.api_requests_per_minute,
            prompt_tokens=prompt_estimate(chars, messages),
            reply_tokens=reply_tokens,
        )
