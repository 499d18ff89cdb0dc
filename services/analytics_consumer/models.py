"""Tables of the `analytics` schema."""

from shared.db import schema_base

Base = schema_base("analytics")
