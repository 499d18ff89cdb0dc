"""Code every ConvoAI service imports: settings, events, topology, db, security, ids, logging."""
