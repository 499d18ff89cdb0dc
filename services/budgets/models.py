"""Tables of the `budgets` schema: the one ledger every gateway and worker writes.

Why a schema of its own rather than the chat's: limits and usage are about a user, not a
conversation; the gateway reserves and the worker settles, and both reach it by this package
only (`ledger.py`, and the settle clause the worker's final statement includes).

Invariants:
- `daily_usage.used_tokens + reserved_tokens` never exceeds the user's `tokens_per_day`: a
  reservation is one conditional upsert, so concurrent requests on any number of gateways are
  serialised by the row lock;
- a reservation row exists exactly while its tokens are counted in `reserved_tokens`: settling
  deletes the row and moves its tokens in the same statement.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, Integer, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_metadata


class Base(DeclarativeBase):
    metadata = schema_metadata("budgets")


LIMITS = "budgets.limits"
DAILY_USAGE = "budgets.daily_usage"
RESERVATIONS = "budgets.reservations"
RATE_WINDOWS = "budgets.rate_windows"


class Limits(Base):
    """What an admin allows a user; a missing row or a null column means no limit."""

    __tablename__ = "limits"

    user_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    requests_per_minute: Mapped[int | None] = mapped_column(Integer)
    tokens_per_day: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DailyUsage(Base):
    __tablename__ = "daily_usage"

    user_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    used_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)


class Reservation(Base):
    """The worst case of one request not yet answered, keyed by its user message."""

    __tablename__ = "reservations"

    message_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(16))
    day: Mapped[date] = mapped_column(Date)
    tokens: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RateWindow(Base):
    """Requests of a user in one clock minute, counted across every gateway."""

    __tablename__ = "rate_windows"

    user_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
