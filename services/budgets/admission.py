"""Admission: the clause of the gateway's message statement that counts a request against its
subjects' limits and reserves its worst case, or refuses it.

Part of the one statement that stores the user message (and its `message.sent` outbox row),
for the same reason `SETTLE_CTE` is part of the worker's final-reply statement: the message and
its reservation exist together or not at all, and the hot path stays one round trip. For each
subject (the user, and the API key when there is one) one ordered upsert counts the request in
the current minute (only against a rate limit), day and month (UTC, by the database's clock),
each row only while it stays within its limit. If any row was refused, the statement calls
`budgets.refuse`, which raises `OVER_LIMIT_SQLSTATE`: everything the statement did is undone,
so a refused request stores, counts and sends nothing, on any number of gateways.

Worst case: a generous estimate of the prompt plus the most the reply may use, priced with the
model the worker will use (read from the conversation in the same statement).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from services.budgets.models import COUNTERS, LIMITS, RESERVATIONS
from services.budgets.pricing import SNAPSHOT_SUFFIX

OVER_LIMIT_SQLSTATE = "CV429"
"""Raised by `budgets.refuse` (migration budgets_0002)."""

ADMISSION_PARAMETERS = 6
"""How many `$n` parameters `admission_ctes` takes (`Admission.parameters`)."""

CHARS_PER_TOKEN_AT_LEAST = 3
"""A token is at least ~3 characters of real text in practice: estimates err on the high side."""

LIMIT_OF_PERIOD = {
    "minute": "requests_per_minute",
    "day": "tokens_per_day",
    "month": "cost_per_month_usd",
}


@dataclass(frozen=True)
class Admission:
    """What one request asks of the ledger."""

    user_id: str
    """The subject charged: the user, or `anon:<address>` for an anonymous socket."""
    key_id: str | None
    """The API key it came with, whose own limits apply as well."""
    default_requests_per_minute: int
    """The user's rate limit unless an admin set one (each door has its own default)."""
    prompt_tokens: int
    reply_tokens: int

    def parameters(self, prices_json: str) -> tuple[Any, ...]:
        """The values of `admission_ctes`'s parameters; `prices_json` is
        `PriceTable.as_sql_json()`."""
        return (
            self.user_id,
            self.key_id,
            self.default_requests_per_minute,
            self.prompt_tokens,
            self.reply_tokens,
            prices_json,
        )


def prompt_estimate(chars: int, messages: int) -> int:
    """An upper estimate of a prompt of `chars` characters in `messages` messages (with the
    per-message overhead tokenizers add)."""
    return math.ceil(chars / CHARS_PER_TOKEN_AT_LEAST) + 8 * (messages + 1)


def chat_prompt_estimate(content_chars: int, context_budget_tokens: int) -> int:
    """The worst case of a chat turn's prompt: the worker fills `context_budget_tokens` counted
    at 4 characters a token (services/chat_worker/prompt.py) with system prompt, knowledge and
    history, and always adds the message itself."""
    history_chars = context_budget_tokens * 4
    return prompt_estimate(history_chars + content_chars, 2)


class OverLimit(Exception):
    """A request the ledger refused."""

    def __init__(self, period: str, subject: str, retry_after_s: float) -> None:
        self.limit = LIMIT_OF_PERIOD[period]
        self.subject = subject
        """`user` or `key`."""
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        """Seconds until the limit's period ends (a budget may free up sooner, when a reply
        uses less than its reservation)."""
        self.reason = "rate_limited" if period == "minute" else "budget_exceeded"
        whose = "this API key's" if subject == "key" else "the"
        what = {
            "minute": "requests per minute",
            "day": "daily token budget",
            "month": "monthly cost budget",
        }[period]
        self.message = f"over {whose} {what}; retry in {self.retry_after_s} s"
        super().__init__(self.message)


def over_limit_from(exc: BaseException) -> OverLimit | None:
    """The refusal `exc` carries if it is `budgets.refuse`'s error (asyncpg's own exception)."""
    if getattr(exc, "sqlstate", None) != OVER_LIMIT_SQLSTATE:
        return None
    detail = json.loads(getattr(exc, "detail", None) or "{}")
    return OverLimit(detail["period"], detail["subject"], float(detail["retry_after_s"]))


def admission_ctes(source: str, model: str, first_parameter: int) -> str:
    """CTEs admitting the request of each row of the CTE `source` (the message just stored,
    column `id`; none: nothing is counted), its model given by the SQL expression `model`, with
    `Admission.parameters` as $first_parameter... The statement must select `REFUSAL`.

    Rows are upserted in key order (subject, period, start), as the settle clause locks them,
    so concurrent admissions and settlements never deadlock."""
    n = first_parameter
    user, key, default_rpm = f"${n}", f"${n + 1}", f"${n + 2}"
    prompt, reply, prices = f"${n + 3}", f"${n + 4}", f"${n + 5}"
    # Names and expressions come from code, never from input; values are $n parameters.
    return f"""priced AS (
    SELECT coalesce(q.prices -> lower(q.model),
                    q.prices -> regexp_replace(lower(q.model), '{SNAPSHOT_SUFFIX}', '')) AS price
    FROM (SELECT CAST({prices} AS jsonb) AS prices, {model} AS model) AS q
), admission AS (
    SELECT r.*, (r.prompt_tokens * r.input_usd_per_million
                 + r.reply_tokens * r.output_usd_per_million) / 1000000 AS usd
    FROM (
        SELECT s.id AS message_id, CAST({user} AS varchar) AS user_id,
               CAST({key} AS varchar) AS key_id,
               CAST({prompt} AS bigint) AS prompt_tokens, CAST({reply} AS bigint) AS reply_tokens,
               CAST({prompt} AS bigint) + CAST({reply} AS bigint) AS tokens,
               coalesce(CAST(p.price ->> 0 AS numeric), 0) AS input_usd_per_million,
               coalesce(CAST(p.price ->> 1 AS numeric), 0) AS output_usd_per_million
        FROM {source} AS s, priced AS p
    ) AS r
), wanted AS (
    SELECT * FROM (
        SELECT subject.id AS subject_id, subject.is_user, period.name AS period,
               date_trunc(period.name, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS starts,
               CASE WHEN period.name = 'minute' THEN 0 ELSE a.tokens END AS tokens,
               CASE WHEN period.name = 'minute' THEN 0 ELSE a.usd END AS usd,
               CASE period.name
                   WHEN 'minute' THEN coalesce(
                       l.requests_per_minute,
                       CASE WHEN subject.is_user THEN CAST({default_rpm} AS integer) END)
                   WHEN 'day' THEN l.tokens_per_day
                   ELSE l.cost_per_month_usd
               END AS cap
        FROM admission AS a
        CROSS JOIN LATERAL (VALUES (a.user_id, true), (a.key_id, false)) AS subject(id, is_user)
        CROSS JOIN (VALUES ('minute'), ('day'), ('month')) AS period(name)
        LEFT JOIN {LIMITS} AS l ON l.subject_id = subject.id
        WHERE subject.id IS NOT NULL
    ) AS w
    WHERE w.period <> 'minute' OR w.cap IS NOT NULL
), counted AS (
    INSERT INTO {COUNTERS} AS c (subject_id, period, starts, owner_id, requests,
                                used_tokens, reserved_tokens, used_usd, reserved_usd)
    SELECT w.subject_id, w.period, w.starts, CAST({user} AS varchar), 1, 0, w.tokens, 0, w.usd
    FROM wanted AS w
    WHERE w.cap IS NULL
       OR CASE w.period WHEN 'minute' THEN 1 WHEN 'day' THEN w.tokens ELSE w.usd END <= w.cap
    ORDER BY w.subject_id, w.period, w.starts
    ON CONFLICT (subject_id, period, starts) DO UPDATE
    SET requests = c.requests + 1,
        reserved_tokens = c.reserved_tokens + EXCLUDED.reserved_tokens,
        reserved_usd = c.reserved_usd + EXCLUDED.reserved_usd
    WHERE NOT EXISTS (
        SELECT 1 FROM wanted AS w
        WHERE w.subject_id = c.subject_id AND w.period = c.period
          AND CASE c.period
                  WHEN 'minute' THEN c.requests + 1
                  WHEN 'day' THEN c.used_tokens + c.reserved_tokens + EXCLUDED.reserved_tokens
                  ELSE c.used_usd + c.reserved_usd + EXCLUDED.reserved_usd
              END > w.cap
    )
    RETURNING c.subject_id, c.period
), refused AS (
    SELECT w.period, CASE WHEN w.is_user THEN 'user' ELSE 'key' END AS subject
    FROM wanted AS w
    WHERE NOT EXISTS (
        SELECT 1 FROM counted AS k WHERE k.subject_id = w.subject_id AND k.period = w.period
    )
    ORDER BY w.period = 'minute' DESC, w.is_user DESC
    LIMIT 1
), reserved AS (
    INSERT INTO {RESERVATIONS} (message_id, user_id, key_id, tokens, usd,
                                input_usd_per_million, output_usd_per_million)
    SELECT message_id, user_id, key_id, tokens, usd, input_usd_per_million, output_usd_per_million
    FROM admission
)"""  # noqa: S608


REFUSAL = "(SELECT budgets.refuse(period, subject) FROM refused) AS over_limit"
"""The select-list item that raises when `admission_ctes` refused a row: it reads `refused`,
which reads `counted`, so the check runs after every row was counted."""
