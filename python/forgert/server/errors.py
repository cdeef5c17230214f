"""OpenAI-shaped error responses: {"error": {"message", "type", "param", "code"}}; on Anthropic's
routes (/v1/messages...), Anthropic's: {"type": "error", "error": {"type", "message"}}.

Every failure the server reports goes through `APIError`, so clients (the official `openai`
and `anthropic` packages included) see the same shape and the matching HTTP status whatever went wrong.
An unexpected exception is a 500 with a fixed message: its text and traceback go to the server's
log only, never to the client (they can hold paths, library internals or other requests' data).
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("forgert.server")

# OpenAI's error "type" for each status we produce.
_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "server_error",
}


# Anthropic's error "type" for each status we produce.
_ANTHROPIC_TYPE_FOR_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    500: "api_error",
    503: "overloaded_error",
}
ANTHROPIC_ROUTES = "/v1/messages"     # this path and those under it answer in Anthropic's shape

INTERNAL_ERROR_MESSAGE = ("The server had an error while processing your request; "
                          "the server log has the details")


class APIError(Exception):
    """A request failure with everything the client needs to fix it."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_FOR_STATUS.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict:
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPE_FOR_STATUS.get(self.status, "api_error"),
                                           "message": self.message}}

    def response(self, request: Request | None = None) -> JSONResponse:
        """The error for `request`: in Anthropic's shape on its routes, else OpenAI's."""
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        anthropic = request is not None and _is_anthropic_route(request.url.path)
        return JSONResponse(self.anthropic_body() if anthropic else self.body(), status_code=self.status,
                            headers=headers)


def _is_anthropic_route(path: str) -> bool:
    return path == ANTHROPIC_ROUTES or path.startswith(ANTHROPIC_ROUTES + "/")


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception the app can raise to an OpenAI-shaped body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response(request)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Starlette raises these for unknown routes (404) and wrong methods (405).
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
            return APIError(404, message, code="unknown_url").response(request)
        if exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
            return APIError(405, message, code="method_not_allowed").response(request)
        return APIError(exc.status_code, str(exc.detail)).response(request)

    app.add_middleware(_UnexpectedErrors)


class _UnexpectedErrors:
    """An unexpected exception becomes the generic 500, logged here once. Not an
    exception_handler(Exception): Starlette raises the exception again after that handler's
    response, and the server then closes the connection, so a client's next request on it (a
    pooled keep-alive connection) failed. An exception after the response began (a stream)
    goes on to the server, which closes the connection: the only way left to say it failed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:    # noqa: BLE001 - the client gets the generic 500
            if started:
                raise
            request = Request(scope)
            log_unexpected(exc, f"{request.method} {request.url.path}")
            await internal_error().response(request)(scope, receive, send)


def generation_error(exc: ValueError) -> APIError:
    """What a ValueError from generating becomes: a 400 (the model refused the request: bad token
    ids, a grammar...), but a 500 naming the problem where the model itself produced logits with no
    token to pick (NaN...): the request was fine, the model (or its file) is not."""
    from ..errors import NonFiniteLogitsError
    if isinstance(exc, NonFiniteLogitsError):
        return APIError(500, str(exc), code="non_finite_logits")
    return APIError(400, str(exc))


def internal_error() -> APIError:
    return APIError(500, INTERNAL_ERROR_MESSAGE, code="internal_error")


def log_unexpected(exc: BaseException, where: str) -> None:
    log.error("internal error in %s", where, exc_info=(type(exc), exc, exc.__traceback__))
