"""The usage ledger: per-user limits, reservations and settled usage, one owner for all edges."""
