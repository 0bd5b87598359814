"""ASGI in front of Kiln's app: requests addressed to an API or a Function URL (by host or
``/_aws/...`` prefix, see ``addressing``) go to the gateways, everything else to ``app``.

    app = GatewayDispatch(kiln, InvokeApp(kiln, starlette_app))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.gateway.addressing import api_address, function_url_address, is_gateway
from kiln.gateway.types import WEBSOCKET

if TYPE_CHECKING:
    from kiln.server import Kiln


class GatewayDispatch:
    def __init__(self, kiln: Kiln, app: ASGIApp) -> None:
        self.kiln = kiln
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The cheap test first: the Invoke fast path behind pays one prefix/host check.
        if scope["type"] in ("http", "websocket") and is_gateway(scope):
            await self.gateway(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def gateway(self, scope: Scope, receive: Receive, send: Send) -> None:
        kiln = self.kiln
        url = function_url_address(scope)
        if url is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await kiln.http_proxy.function_url(scope, receive, send, *url)
            return
        address = api_address(scope, kiln.gateway.has_stage)
        if address is None:
            await self.app(scope, receive, send)
            return
        api_id, stage, path = address
        api = kiln.gateway.deployed(api_id)
        if scope["type"] == "websocket" or (api is not None and api.protocol == WEBSOCKET):
            await self.websocket_api(scope, receive, send, api_id, stage, path)
            return
        await kiln.http_proxy.api(scope, receive, send, api, stage, path)

    async def websocket_api(self, scope: Scope, receive: Receive, send: Send, api_id: str,
                            stage: str, path: str) -> None:
        """THE spot for WebSocket APIs: every ``websocket`` scope, and every HTTP request to a
        WEBSOCKET API (the ``@connections`` API), lands here."""
        if scope["type"] == "websocket":
            await self.kiln.websockets.handle_websocket(scope, receive, send, api_id, stage)
            return
        await self.kiln.websockets.handle_http(scope, receive, send, api_id, stage, path)
