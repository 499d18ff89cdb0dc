"""Tables of the `budgets` schema: the one ledger every gateway and worker writes.

Why a schema of its own rather than the chat's: limits and usage are about a user (or an API
key), not a conversation; the gateway reserves and the worker settles, and both reach it by this
package only (the admission clause of the gateway's message statement, the settle clause of the
worker's final-reply statement, `ledger.py`).

A *subject* is what a limit applies to: a user id, an API key id (ids of different kinds never
collide), or `anon:<client address>` for anonymous sockets. Each has one counter row per clock
minute, UTC day and UTC month it was active in.

Invariants:
- within a subject's limits, `requests` of a minute, `used_tokens + reserved_tokens` of a day and
  `used_usd + reserved_usd` of a month never exceed the limit at the time of admission: one
  conditional upsert per row, so concurrent requests on any number of gateways are serialised by
  the row lock, and a request is refused by every gateway alike;
- a reservation row exists exactly while its worst case is counted in `reserved_*` of its day
  and month rows (the user's and, with a key, the key's): settling or releasing deletes the row
  and moves the amounts in the same statement.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, DateTime, Integer, Numeric, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_metadata


class Base(DeclarativeBase):
    metadata = schema_metadata("budgets")


LIMITS = "budgets.limits"
COUNTERS = "budgets.counters"
RESERVATIONS = "budgets.reservations"

SUBJECT_LENGTH = 64
USD = Numeric(20, 10)
"""A token of the cheapest model costs 5e-8 USD; ten decimals keep every reply's cost exact."""

MINUTE, DAY, MONTH = "minute", "day", "month"
"""Counter periods; each is also the `date_trunc` field that gives its start (UTC)."""


class Limits(Base):
    """What an admin allows a subject; a missing row or a null column means no limit (for a
    user's requests per minute: the door's default)."""

    __tablename__ = "limits"

    subject_id: Mapped[str] = mapped_column(String(SUBJECT_LENGTH), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(SUBJECT_LENGTH))
    """The user; for a key, the key's owner."""
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    cost_per_month_usd: Mapped[Decimal | None] = mapped_column(USD)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Counter(Base):
    """What a subject used and has reserved in one period (`minute` rows count only requests)."""

    __tablename__ = "counters"

    subject_id: Mapped[str] = mapped_column(String(SUBJECT_LENGTH), primary_key=True)
    period: Mapped[str] = mapped_column(String(8), primary_key=True)
    starts: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(SUBJECT_LENGTH))
    requests: Mapped[int] = mapped_column(Integer)
    used_tokens: Mapped[int] = mapped_column(BigInteger)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger)
    used_usd: Mapped[Decimal] = mapped_column(USD)
    reserved_usd: Mapped[Decimal] = mapped_column(USD)


class Reservation(Base):
    """The worst case of one request not yet answered, keyed by its user message; with the
    prices of its model, so the settling worker charges the real cost without a price table."""

    __tablename__ = "reservations"

    message_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(SUBJECT_LENGTH))
    key_id: Mapped[str | None] = mapped_column(String(SUBJECT_LENGTH))
    tokens: Mapped[int] = mapped_column(BigInteger)
    usd: Mapped[Decimal] = mapped_column(USD)
    input_usd_per_million: Mapped[Decimal] = mapped_column(USD)
    output_usd_per_million: Mapped[Decimal] = mapped_column(USD)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    """Also the day and month it counts in (the admission's `now()`)."""
