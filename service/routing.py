"""Routing by path segments: one dictionary lookup instead of a regex per route.

Starlette's router tries each route's regular expression in turn; with the
API's thirty-odd routes that was the largest single cost of a small request.
Every path here is a template of literal segments and ``{name}`` segments
(each matching one non-empty segment, as Starlette's default does), so routes
are grouped by their segment count and matched segment by segment.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ROUTE_KEY", "Handler", "HandlerRoute", "SegmentRouter"]

#: a handler answers with a Response, or any ASGI app (a streaming response)
Handler = Callable[[Request], Awaitable[ASGIApp]]

#: where a matched route puts its path template in the scope (for metrics and logs)
ROUTE_KEY = "aos.route"


class HandlerRoute(Route):
    """One path and method, calling its handler directly.

    Exceptions go up to the request middleware, which answers each with its
    problem, so Starlette's per-route exception wrapping is left out.
    """

    def __init__(self, path: str, handler: Handler, method: str) -> None:
        super().__init__(path, handler, methods=[method])
        self.handler = handler
        self.method = method
        self.segments: tuple[str | None, ...] = tuple(
            None if part.startswith("{") else part for part in path.split("/")
        )
        self.names: tuple[str | None, ...] = tuple(
            part[1:-1] if part.startswith("{") else None for part in path.split("/")
        )

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.handler(Request(scope, receive, send))
        await response(scope, receive, send)


class SegmentRouter(Router):
    def __init__(self, routes: Sequence[HandlerRoute], **kwargs: Any) -> None:
        super().__init__(routes=list(routes), **kwargs)
        # segment count -> [(template, names, {method: route})]
        self._by_length: dict[
            int,
            list[tuple[tuple[str | None, ...], tuple[str | None, ...], dict[str, HandlerRoute]]],
        ] = {}
        for route in routes:
            bucket = self._by_length.setdefault(len(route.segments), [])
            for template, _, methods in bucket:
                if template == route.segments:
                    methods[route.method] = route
                    break
            else:
                bucket.append((route.segments, route.names, {route.method: route}))

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().app(scope, receive, send)
            return
        parts = scope["path"].split("/")
        for template, names, methods in self._by_length.get(len(parts), ()):
            params: dict[str, str] = {}
            for part, literal, name in zip(parts, template, names, strict=True):
                if literal is None:
                    if not part:
                        break
                    params[name] = part  # type: ignore[index]
                elif part != literal:
                    break
            else:
                method = scope["method"]
                route = methods.get("GET" if method == "HEAD" else method)
                if route is None:
                    raise HTTPException(405, headers={"Allow": ", ".join(sorted(methods))})
                scope["path_params"] = params
                scope["endpoint"] = route.handler
                scope[ROUTE_KEY] = route.path
                await route.serve(scope, receive, send)
                return
        raise HTTPException(404)
