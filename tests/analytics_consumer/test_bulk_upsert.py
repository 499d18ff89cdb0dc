"""The SQL of a bulk upsert, built from table metadata (no database needed)."""

from __future__ import annotations

from services.analytics_consumer import models
from services.analytics_consumer.accumulators import Sums
from services.analytics_consumer.bulk_upsert import BulkUpsert, sum_rows


def test_additive_rollup_sums_every_non_key_column_from_typed_arrays():
    upsert = BulkUpsert.additive(models.TtftHistogram, ("model", "bucket_ms"))
    sql = upsert.sql()
    assert sql.startswith("INSERT INTO analytics.ttft_histogram AS t (model, bucket_ms, replies)")
    assert "unnest(CAST(:model AS text[]), CAST(:bucket_ms AS integer[])" in sql
    assert sql.endswith(
        "ON CONFLICT (model, bucket_ms) DO UPDATE SET replies = t.replies + excluded.replies"
    )


def test_insert_only_upsert_does_nothing_on_conflict_and_can_return():
    upsert = BulkUpsert(
        models.ReplyMetrics.__table__,  # type: ignore[arg-type]
        ("message_id", "event_id"),
        ("message_id",),
        {},
        returning="message_id",
    )
    assert upsert.sql().endswith("ON CONFLICT (message_id) DO NOTHING RETURNING message_id")
    assert "CAST(:event_id AS uuid[])" in upsert.sql()


def test_rollup_rows_come_in_key_order_with_missing_sums_as_zero():
    sums: dict[tuple[str, int], Sums] = {}
    for key, amount in ((("b", 1), 2), (("a", 5), 1), (("a", 2), 3)):
        sums[key] = Sums()
        sums[key].add("replies", amount)
    rows = sum_rows(("model", "bucket_ms"), ("model", "bucket_ms", "replies", "other"), sums)
    assert rows == [
        {"model": "a", "bucket_ms": 2, "replies": 3, "other": 0},
        {"model": "a", "bucket_ms": 5, "replies": 1, "other": 0},
        {"model": "b", "bucket_ms": 1, "replies": 2, "other": 0},
    ]
