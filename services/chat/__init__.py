"""The chat domain: the `chat` schema (tables, migrations, outbox) and the rules about replies
that the gateway and the chat workers both follow. Either process imports it; neither imports
the other."""
