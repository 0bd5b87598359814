"""uvicorn's WebSocket protocol with API Gateway's frame and message limits.

    uvicorn.Config(app, ws=ApiGatewayWebSocketProtocol)

A message over 128 KB, or a single frame over 32 KB, closes the connection with 1009 (Message
Too Big), as API Gateway does; a client must split larger messages into frames. There is no
permessage-deflate, which API Gateway does not negotiate either.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

MESSAGE_LIMIT = 128 * 1024
FRAME_LIMIT = 32 * 1024


class ApiGatewayWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # The sans-I/O parser reads both limits afresh for every frame (websockets >= 15).
        self.conn.max_message_size = MESSAGE_LIMIT
        self.conn.max_fragment_size = FRAME_LIMIT
        self.conn.available_extensions = []
