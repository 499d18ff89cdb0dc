"""Pagination of every list endpoint: `skip`/`limit` query parameters and the page they return."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

MAX_SKIP = 1_000_000
MAX_PAGE_SIZE = 100
MAX_REPORT_PAGE_SIZE = 200
"""Dashboard reports page wider than user-facing lists: an admin's table, not a phone screen."""

T = TypeVar("T")

Skip = Annotated[int, Query(ge=0, le=MAX_SKIP)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
ReportLimit = Annotated[int, Query(ge=1, le=MAX_REPORT_PAGE_SIZE)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    skip: int
    limit: int
