"""Assistant knowledge files: the `knowledge` schema, text extraction, chunking and retrieval.

A domain package, not a process: the gateway stores uploads, the knowledge worker extracts and
indexes them, the chat worker retrieves chunks into prompts.
"""
