"""Tables of the `auth` schema."""

from shared.db import schema_base
from shared.outbox import outbox_table

Base = schema_base("auth")

outbox = outbox_table(Base.metadata)
