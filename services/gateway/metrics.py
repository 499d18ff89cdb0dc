"""The gateway's Prometheus metrics: WebSockets and their frames.

HTTP requests are counted by `shared.metrics` (route templates); the outbox backlog by
`shared.metrics.outbox_backlog`. Label values come from closed sets: client frame types the
parser accepted, error codes and close codes written in our code.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OPEN_SOCKETS = Gauge("convoai_ws_open_connections", "WebSockets open on this gateway")
FRAMES_RECEIVED = Counter(
    "convoai_ws_frames_received",
    "Client frames received, by type (`invalid` for a frame that did not parse)",
    ["type"],
)
FRAMES_SENT = Counter("convoai_ws_frames_sent", "Frames written to client sockets")
ERROR_FRAMES = Counter(
    "convoai_ws_error_frames",
    "Error frames sent, by code (`rate_limited` counts refusals for rate)",
    ["code"],
)
SOCKET_CLOSES = Counter(
    "convoai_ws_closes", "WebSockets closed, by close code (1006: the client vanished)", ["code"]
)
