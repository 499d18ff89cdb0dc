"""Tables of the `chat` schema (owned by the gateway, shared with the chat workers)."""

from shared.db import schema_base
from shared.outbox import outbox_table

Base = schema_base("chat")

outbox = outbox_table(Base.metadata)
