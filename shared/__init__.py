"""Code every ConvoAI service imports: settings, events, topology, database, security, ids, logging."""
