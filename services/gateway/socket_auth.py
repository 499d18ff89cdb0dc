"""Who a chat socket belongs to: the authentication handshake (a `?token=`, an `auth` frame,
or anonymous), a fresh token on the open socket, and closing the socket when its token expires.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.gateway.context import Gateway
from services.gateway.protocol import (
    CLOSE_ACCESS_REVOKED,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_MANY_SOCKETS,
    CLOSE_TRY_AGAIN_LATER,
    AuthFrame,
    BadFrame,
    parse_client_frame,
)
from services.gateway.service import new_anonymous_owner_id
from services.gateway.socket_io import SocketIO
from shared.security import (
    InvalidToken,
    Principal,
    RevocationStateBehind,
    RevokedToken,
)

BadFrameHandler = Callable[[BadFrame], None]


class SocketAuth:
    """The principal of one socket, from the handshake until the socket closes."""

    __slots__ = (
        "_admit",
        "_expiry",
        "_gw",
        "_io",
        "_on_bad_frame",
        "_settings",
        "anonymous",
        "principal",
    )

    def __init__(
        self,
        io: SocketIO,
        gateway: Gateway,
        on_bad_frame: BadFrameHandler,
        admit: Callable[[Principal], bool],
    ) -> None:
        self._admit = admit
        self._io = io
        self._gw = gateway
        self._settings = gateway.settings
        self._on_bad_frame = on_bad_frame
        self.principal: Principal | None = None
        self.anonymous = False
        self._expiry: asyncio.TimerHandle | None = None

    async def authenticate(self) -> bool:
        """Run the handshake; True once the socket has a principal and `ready` was sent."""
        token: str | None = self._io.websocket.query_params.get("token")
        while token is None and not self.anonymous:
            raw = await self._io.receive(self._settings.ws_auth_timeout_s, "authentication timeout")
            if raw is None:
                return False
            try:
                frame = parse_client_frame(raw, self._settings.max_frame_bytes)
            except BadFrame as exc:
                self._on_bad_frame(exc)
                continue
            if not isinstance(frame, AuthFrame):
                self._io.error("unauthenticated", "the first frame must be auth")
                self._io.close(CLOSE_POLICY_VIOLATION, "not authenticated")
                return False
            if frame.anonymous and frame.token is None:
                if not self._settings.allow_anonymous:
                    self._io.error("anonymous_disabled", "anonymous chat is not enabled")
                    self._io.close(CLOSE_POLICY_VIOLATION, "not authenticated")
                    return False
                self.anonymous = True
            elif frame.token is None:
                self._on_bad_frame(BadFrame("invalid_frame", "token: field required"))
                continue
            token = frame.token
        if self.anonymous:
            self.principal = Principal(new_anonymous_owner_id(), "anonymous", frozenset(), "")
        else:
            assert token is not None
            try:
                self.principal = await self._gw.verifier.verify_access_when_current(token)
            except RevokedToken:
                self._io.error("access_revoked", "access was revoked; log in again")
                self._io.close(CLOSE_ACCESS_REVOKED, "access revoked")
                return False
            except InvalidToken:
                self._io.error("unauthorized", "invalid or expired token")
                self._io.close(CLOSE_POLICY_VIOLATION, "invalid token")
                return False
            except RevocationStateBehind:
                self._io.error("unavailable", "catching up on revoked sessions; reconnect shortly")
                self._io.close(CLOSE_TRY_AGAIN_LATER, "revocations catching up")
                return False
            self._expire_at(self.principal.expires_at)
        self._io.user_id = self.principal.user_id
        if not self._admit(self.principal):
            self._io.error("too_many_sockets", "too many open sockets; close another one first")
            self._io.close(CLOSE_TOO_MANY_SOCKETS, "too many sockets")
            return False
        self._io.send(
            {
                "type": "ready",
                "user_id": self.principal.user_id,
                "username": self.principal.username,
                "anonymous": self.anonymous,
                "limits": {
                    "max_frame_bytes": self._settings.max_frame_bytes,
                    "max_message_length": self._settings.max_message_length,
                    "messages_per_minute": (
                        self._settings.anonymous_messages_per_minute
                        if self.anonymous
                        else self._settings.messages_per_minute
                    ),
                },
            }
        )
        return True

    async def reauthenticate(self, frame: AuthFrame) -> None:
        """A fresh token for the same user extends the socket's life (no reconnect needed)."""
        assert self.principal is not None
        if self.anonymous or frame.token is None:
            self._io.error("already_authenticated", "this socket is already authenticated")
            return
        try:
            principal = await self._gw.verifier.verify_access_when_current(frame.token)
        except RevokedToken:
            self._io.error("access_revoked", "access was revoked; log in again")
            self._io.close(CLOSE_ACCESS_REVOKED, "access revoked")
            return
        except (InvalidToken, RevocationStateBehind):
            self._io.error("unauthorized", "invalid or expired token")
            return
        if principal.user_id != self.principal.user_id:
            self._io.error("user_mismatch", "a socket stays with the user it authenticated as")
            return
        self.principal = principal
        self._expire_at(principal.expires_at)
        self._io.send({"type": "reauthenticated", "user_id": principal.user_id})

    def revoke_access(self, revoked_before: float) -> None:
        """Close at once when this socket's token was issued before the user's access ended."""
        if self.principal is not None and self.principal.issued_at < revoked_before:
            self._io.error("access_revoked", "access was revoked; log in again")
            self._io.close(CLOSE_ACCESS_REVOKED, "access revoked")

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()

    def _expire_at(self, expires_at: float) -> None:
        """Close the socket when its access token expires, unless a fresh one arrives first."""
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._expiry = loop.call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self._io.error("token_expired", "access token expired; reconnect with a fresh one")
        self._io.close(CLOSE_POLICY_VIOLATION, "token expired")
