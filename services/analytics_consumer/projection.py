"""Events → metric deltas: what each event type changes, as pure code (no I/O, no clock).

`BatchEffects.add` dispatches through `EVENT_HANDLERS`, a table from routing key to handler;
a new event type that analytics should count gets one method and one row there. (Over 400
lines: the handlers and their table are one unit, read together.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from services.analytics_consumer import models
from services.analytics_consumer.accumulators import (
    ApiKeyDelta,
    ConversationDelta,
    ReplyRow,
    Sums,
    UserDelta,
    clip,
    earliest,
    latest,
    ttft_bucket,
    utc_day,
)
from services.budgets.pricing import PriceTable
from shared.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    ConversationCreated,
    ConversationDeleted,
    ConversationEnded,
    ConversationRenamed,
    Event,
    FileFailed,
    FileProcessed,
    FileUploaded,
    HttpRequestCompleted,
    MessageSent,
    ReplyCancelled,
    ReplyCompleted,
    ReplyFailed,
    UserDeleted,
    UserLoggedIn,
    UserLoggedOut,
    UserLoginFailed,
    UserRegistered,
    UserUpdated,
)


@dataclass
class BatchEffects:
    """Everything one batch changes, merged in memory before a handful of upserts."""

    prices: PriceTable
    users: dict[str, UserDelta] = field(default_factory=dict)
    conversations: dict[str, ConversationDelta] = field(default_factory=dict)
    activities: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[str, ReplyRow] = field(default_factory=dict)
    daily: defaultdict[date, Sums] = field(default_factory=lambda: defaultdict(Sums))
    daily_users: defaultdict[tuple[date, str], Sums] = field(
        default_factory=lambda: defaultdict(Sums)
    )
    daily_models: defaultdict[tuple[date, str], Sums] = field(
        default_factory=lambda: defaultdict(Sums)
    )
    daily_api_keys: defaultdict[tuple[date, str, str], Sums] = field(
        default_factory=lambda: defaultdict(Sums)
    )
    """Per (day, API key, its owner)."""
    api_keys: dict[str, ApiKeyDelta] = field(default_factory=dict)
    ttft: defaultdict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    api: dict[tuple[date, str, str, str, int], list[float]] = field(default_factory=dict)
    counters: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    deleted_users: set[str] = field(default_factory=set)
    """Users deleted by this batch: their names go, from their row and their activities."""

    # -- touching rows --

    def _user(self, user_id: str, at: datetime) -> UserDelta:
        delta = self.users.get(user_id)
        if delta is None:
            delta = self.users[user_id] = UserDelta(first_seen_at=at, last_seen_at=at)
        else:
            delta.first_seen_at = min(delta.first_seen_at, at)
            delta.last_seen_at = max(delta.last_seen_at, at)
        return delta

    def _active(self, user_id: str, day: date) -> Sums:
        return self.daily_users[(day, user_id)]

    def _conversation(self, conversation_id: str, at: datetime) -> ConversationDelta:
        delta = self.conversations.get(conversation_id)
        if delta is None:
            delta = self.conversations[conversation_id] = ConversationDelta(
                started_at=at, last_activity_at=at
            )
        else:
            delta.started_at = min(delta.started_at, at)
            delta.last_activity_at = max(delta.last_activity_at, at)
        return delta

    def _activity(
        self,
        event: Event,
        activity_type: str,
        *,
        username: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.activities.append(
            {
                "event_id": event.event_id,
                "user_id": event.user_id,
                "username": clip(username, models.NAME_LENGTH),
                "activity_type": activity_type,
                "ip": clip(ip, 64),
                "user_agent": clip(user_agent, models.USER_AGENT_LENGTH),
                "details": details,
                "source": "event",
                "occurred_at": event.occurred_at,
            }
        )

    # -- events --

    def add(self, event: Event) -> None:
        """Record an event whose id is new; replies only stage a row (see `add_reply`)."""
        # A dict lookup, not `match`: isinstance on pydantic models goes through ABCMeta and
        # was the single largest Python cost per event.
        handler = EVENT_HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event)

    def _user_registered(self, event: UserRegistered) -> None:
        self._activity(
            event, "registration", username=event.username, ip=event.ip, user_agent=event.user_agent
        )
        day = utc_day(event.occurred_at)
        self.daily[day].add("new_users", 1)
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.username = event.username
            user.registered_at = earliest(user.registered_at, event.occurred_at)
            self._set_roles(user, event.roles, event.occurred_at)
            self._active(event.user_id, day)

    def _user_logged_in(self, event: UserLoggedIn) -> None:
        self._activity(
            event, "login", username=event.username, ip=event.ip, user_agent=event.user_agent
        )
        day = utc_day(event.occurred_at)
        self.daily[day].add("logins", 1)
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.username = user.username or event.username
            user.last_login_at = latest(user.last_login_at, event.occurred_at)
            user.counters["logins"] += 1
            self._active(event.user_id, day).add("logins", 1)

    def _user_login_failed(self, event: UserLoginFailed) -> None:
        self._activity(
            event,
            "login_failed",
            username=event.username_attempted,
            ip=event.ip,
            user_agent=event.user_agent,
            details={"reason": event.reason},
        )
        self.daily[utc_day(event.occurred_at)].add("failed_logins", 1)

    def _user_logged_out(self, event: UserLoggedOut) -> None:
        self._activity(event, "logout", ip=event.ip, user_agent=event.user_agent)
        day = utc_day(event.occurred_at)
        self.daily[day].add("logouts", 1)
        if event.user_id:
            self._user(event.user_id, event.occurred_at)
            self._active(event.user_id, day)

    def _user_updated(self, event: UserUpdated) -> None:
        self._activity(
            event,
            "profile_updated",
            details={"changed_fields": event.changed_fields, "actor_id": event.actor_id},
        )
        if not event.user_id:
            return
        user = self._user(event.user_id, event.occurred_at)
        if event.roles is not None:
            self._set_roles(user, event.roles, event.occurred_at)
        if event.is_active is not None and (
            user.is_active_set_at is None or event.occurred_at >= user.is_active_set_at
        ):
            user.is_active = event.is_active
            user.is_active_set_at = event.occurred_at

    def _user_deleted(self, event: UserDeleted) -> None:
        """Anonymise: the account's name goes (here, and from its activities in `upserts.py`);
        its metrics stay under the opaque user id."""
        self._activity(event, "account_deleted", details={"actor_id": event.actor_id})
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.deleted_at = earliest(user.deleted_at, event.occurred_at)
            user.username = None
            self.deleted_users.add(event.user_id)

    def _api_key(self, key_id: str, event: Event) -> ApiKeyDelta:
        key = self.api_keys.setdefault(key_id[: models.ID_LENGTH], ApiKeyDelta())
        key.user_id = key.user_id or event.user_id
        return key

    def _api_key_created(self, event: ApiKeyCreated) -> None:
        key = self._api_key(event.key_id, event)
        key.name = clip(event.name, models.NAME_LENGTH)
        key.prefix = clip(event.prefix, 32)
        key.created_at = earliest(key.created_at, event.occurred_at)

    def _api_key_revoked(self, event: ApiKeyRevoked) -> None:
        key = self._api_key(event.key_id, event)
        key.revoked_at = earliest(key.revoked_at, event.occurred_at)

    def _conversation_created(self, event: ConversationCreated) -> None:
        conversation = self._conversation(event.conversation_id, event.occurred_at)
        conversation.created_at = earliest(conversation.created_at, event.occurred_at)
        conversation.model = clip(event.model, models.MODEL_LENGTH) or conversation.model
        conversation.assistant_id = event.assistant_id or conversation.assistant_id
        day = utc_day(event.occurred_at)
        self.daily[day].add("conversations_created", 1)
        if event.user_id:
            conversation.user_id = event.user_id
            self._user(event.user_id, event.occurred_at).counters["conversations"] += 1
            self._active(event.user_id, day).add("conversations_created", 1)

    def _conversation_touched(self, event: ConversationRenamed) -> None:
        self._owned_conversation(event.conversation_id, event)

    def _conversation_ended(self, event: ConversationEnded) -> None:
        conversation = self._owned_conversation(event.conversation_id, event)
        conversation.ended_at = earliest(conversation.ended_at, event.occurred_at)

    def _conversation_deleted(self, event: ConversationDeleted) -> None:
        conversation = self._owned_conversation(event.conversation_id, event)
        conversation.deleted_at = earliest(conversation.deleted_at, event.occurred_at)

    def _message_sent(self, event: MessageSent) -> None:
        conversation = self._owned_conversation(event.conversation_id, event)
        conversation.counters["user_messages"] += 1
        day = utc_day(event.occurred_at)
        self.daily[day].add("user_messages", 1)
        if event.user_id:
            self._user(event.user_id, event.occurred_at).counters["user_messages"] += 1
            self._active(event.user_id, day).add("user_messages", 1)

    def _set_roles(self, user: UserDelta, roles: list[str], at: datetime) -> None:
        if user.roles_set_at is None or at >= user.roles_set_at:
            user.roles = [role[:32] for role in roles]
            user.roles_set_at = at

    def _owned_conversation(self, conversation_id: str, event: Event) -> ConversationDelta:
        conversation = self._conversation(conversation_id, event.occurred_at)
        if event.user_id and conversation.user_id is None:
            conversation.user_id = event.user_id
        return conversation

    def _stage_reply(self, event: ReplyCompleted | ReplyFailed | ReplyCancelled) -> None:
        if event.message_id in self.replies:
            # Two outcomes for one reply in one batch: the first wins, as it would across batches.
            return
        model = clip(event.model, models.MODEL_LENGTH) or models.UNKNOWN_MODEL
        prompt_tokens = getattr(event, "prompt_tokens", 0)
        completion_tokens = getattr(event, "completion_tokens", 0)
        usage_estimated = getattr(event, "usage_estimated", False)
        cost = self.prices.cost(model, prompt_tokens, completion_tokens)
        ttft: float | None = None
        finish: str | None = None
        error: str | None = None
        if isinstance(event, ReplyCompleted):
            status, ttft, finish = "completed", event.ttft_ms, event.finish_reason
        elif isinstance(event, ReplyFailed):
            status, error = "failed", event.error_code
        else:
            status = "cancelled"
        self.replies[event.message_id] = ReplyRow(
            row={
                "message_id": event.message_id,
                "event_id": event.event_id,
                "conversation_id": event.conversation_id,
                "user_id": event.user_id,
                "reply_to": event.reply_to,
                "model": model,
                "status": status,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "usage_estimated": usage_estimated,
                "api_key_id": clip(event.api_key_id, models.ID_LENGTH),
                "cost_usd": cost.usd,
                "price_known": cost.price_known,
                "ttft_ms": ttft,
                "duration_ms": event.duration_ms,
                "finish_reason": clip(finish, 32),
                "error_code": clip(error, 64),
                "occurred_at": event.occurred_at,
            },
            event=event,
        )

    def add_reply(self, reply: ReplyRow) -> None:
        """Count a reply whose row was new (its message id had no outcome yet)."""
        row, event = reply.row, reply.event
        day = utc_day(event.occurred_at)
        status: str = row["status"]
        model: str = row["model"]
        tokens = {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
        }
        cost: Decimal = row["cost_usd"]
        daily, per_model = self.daily[day], self.daily_models[(day, model)]
        conversation = self._owned_conversation(event.conversation_id, event)
        counter = f"replies_{status}"
        for sums in (daily, per_model):
            sums.add(counter, 1)
            sums.add("cost_usd", cost)
            for name, value in tokens.items():
                sums.add(name, value)
        conversation.counters[counter] += 1
        conversation.cost_usd += cost
        for name, value in tokens.items():
            conversation.counters[name] += value
        if row["usage_estimated"]:
            # Estimated counts are in the totals above, and counted apart so a reader can tell.
            for sums in (daily, per_model):
                self._add_estimated(sums, row)
        if row["api_key_id"] is not None:
            per_key = self.daily_api_keys[(day, row["api_key_id"], event.user_id or "")]
            per_key.add(counter, 1)
            per_key.add("cost_usd", cost)
            for name, value in tokens.items():
                per_key.add(name, value)
            if row["usage_estimated"]:
                self._add_estimated(per_key, row)
        if not row["price_known"]:
            per_model.add("unpriced_replies", 1)
            self.counters["unpriced_replies"] += 1
        if status == "completed":
            duration, ttft = row["duration_ms"], row["ttft_ms"] or 0.0
            for sums in (daily, per_model):
                sums.add("reply_duration_ms_total", duration)
                sums.add("ttft_ms_total", ttft)
            conversation.reply_duration_ms_total += duration
            conversation.ttft_ms_total += ttft
            bucket = ttft_bucket(ttft)
            self.ttft[(model, bucket)] += 1
            self.ttft[(models.ALL_MODELS, bucket)] += 1
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.counters["replies"] += 1
            user.cost_usd += cost
            active = self._active(event.user_id, day)
            active.add("replies", 1)
            active.add("cost_usd", cost)
            for name, value in tokens.items():
                user.counters[name] += value
                active.add(name, value)

    @staticmethod
    def _add_estimated(sums: Sums, row: dict[str, Any]) -> None:
        sums.add("estimated_replies", 1)
        sums.add("estimated_prompt_tokens", row["prompt_tokens"])
        sums.add("estimated_completion_tokens", row["completion_tokens"])

    def _count_file_event(self, event: FileUploaded | FileProcessed | FileFailed) -> None:
        """Knowledge files: how many were uploaded, indexed and refused (by reason)."""
        self.counters[event.type] += 1
        if isinstance(event, FileFailed):
            self.counters[f"file.failed.{event.reason[:64]}"] += 1
        elif isinstance(event, FileProcessed):
            self.counters["file.chunks_indexed"] += event.chunks

    def _add_http(self, event: HttpRequestCompleted) -> None:
        service = event.service[:64]
        for request in event.requests:
            day = utc_day(request.occurred_at)
            key = (
                day,
                service,
                request.route[: models.ROUTE_LENGTH],
                request.method.upper()[:16],
                request.status,
            )
            duration = max(0.0, request.duration_ms)
            totals = self.api.get(key)
            if totals is None:
                self.api[key] = [1, duration, duration]
            else:
                totals[0] += 1
                totals[1] += duration
                totals[2] = max(totals[2], duration)
            daily = self.daily[day]
            daily.add("api_calls", 1)
            daily.add("api_duration_ms_total", duration)
            if request.status >= 500:
                daily.add("api_server_errors", 1)
            elif request.status >= 400:
                daily.add("api_client_errors", 1)


EVENT_HANDLERS: dict[str, Callable[[BatchEffects, Any], None]] = {
    UserRegistered.routing_key: BatchEffects._user_registered,
    UserLoggedIn.routing_key: BatchEffects._user_logged_in,
    UserLoginFailed.routing_key: BatchEffects._user_login_failed,
    UserLoggedOut.routing_key: BatchEffects._user_logged_out,
    UserUpdated.routing_key: BatchEffects._user_updated,
    UserDeleted.routing_key: BatchEffects._user_deleted,
    ApiKeyCreated.routing_key: BatchEffects._api_key_created,
    ApiKeyRevoked.routing_key: BatchEffects._api_key_revoked,
    ConversationCreated.routing_key: BatchEffects._conversation_created,
    ConversationRenamed.routing_key: BatchEffects._conversation_touched,
    ConversationEnded.routing_key: BatchEffects._conversation_ended,
    ConversationDeleted.routing_key: BatchEffects._conversation_deleted,
    MessageSent.routing_key: BatchEffects._message_sent,
    ReplyCompleted.routing_key: BatchEffects._stage_reply,
    ReplyFailed.routing_key: BatchEffects._stage_reply,
    ReplyCancelled.routing_key: BatchEffects._stage_reply,
    HttpRequestCompleted.routing_key: BatchEffects._add_http,
    FileUploaded.routing_key: BatchEffects._count_file_event,
    FileProcessed.routing_key: BatchEffects._count_file_event,
    FileFailed.routing_key: BatchEffects._count_file_event,
}
"""What each event type changes; types not listed (`reply.started`) carry nothing kept here."""
