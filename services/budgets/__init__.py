"""The usage ledger: limits per user and API key (rate, tokens/day, cost/month), reservations,
settled usage and the price table; one owner for every door and worker."""
