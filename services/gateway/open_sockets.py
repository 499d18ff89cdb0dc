"""Every chat socket open on this gateway process, by user and by anonymous client address.

Two jobs that need the same index: a cap on sockets per user and per anonymous address (one
client opening hundreds of sockets costs memory, tasks and broker bindings on every gateway),
and closing a user's sockets at once when their access is revoked (README, "Revoked access").
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol


class OpenSocket(Protocol):
    def revoke_access(self, revoked_before: float) -> None:
        """Close the socket if it authenticated with a token issued before `revoked_before`."""


class OpenSockets:
    def __init__(self, max_per_user: int, max_per_anonymous_address: int) -> None:
        self._max_per_user = max_per_user
        self._max_per_anonymous_address = max_per_anonymous_address
        self._by_key: defaultdict[str, set[OpenSocket]] = defaultdict(set)

    def admit(self, socket: OpenSocket, user_id: str, anonymous_address: str | None) -> str | None:
        """Count `socket` for its user (or anonymous address): the key to `release` it with,
        None when over the cap."""
        if anonymous_address is not None:
            key, limit = f"anon:{anonymous_address}", self._max_per_anonymous_address
        else:
            key, limit = f"user:{user_id}", self._max_per_user
        sockets = self._by_key[key]
        if len(sockets) >= limit:
            if not sockets:
                del self._by_key[key]
            return None
        sockets.add(socket)
        return key

    def release(self, socket: OpenSocket, key: str) -> None:
        """Stop counting `socket` (`key` is what `admit` returned): without scanning every
        key, which made closing 10 000 sockets quadratic."""
        sockets = self._by_key.get(key)
        if sockets is not None:
            sockets.discard(socket)
            if not sockets:
                del self._by_key[key]

    def revoke(self, user_id: str, revoked_before: float) -> None:
        for socket in tuple(self._by_key.get(f"user:{user_id}", ())):
            socket.revoke_access(revoked_before)

    def count(self) -> int:
        return sum(len(s) for s in self._by_key.values())
