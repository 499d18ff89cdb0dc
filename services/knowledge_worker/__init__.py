"""The knowledge worker: `file.uploaded` → extracted, chunked, indexed (or failed with a reason)."""
