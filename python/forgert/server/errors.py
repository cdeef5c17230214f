"""OpenAI-shaped error responses: {"error": {"message", "type", "param", "code"}}.

Every failure the server reports goes through `APIError`, so clients (the official `openai`
package included) see the same shape and the matching HTTP status whatever went wrong.
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

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception the app can raise to an OpenAI-shaped body."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # Starlette raises these for unknown routes (404) and wrong methods (405).
        if exc.status_code == 404:
            message = f"Unknown route: {request.method} {request.url.path}"
            return APIError(404, message, code="unknown_url").response()
        if exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}"
            return APIError(405, message, code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log_unexpected(exc, f"{request.method} {request.url.path}")
        return internal_error().response()


def internal_error() -> APIError:
    return APIError(500, INTERNAL_ERROR_MESSAGE, code="internal_error")


def log_unexpected(exc: BaseException, where: str) -> None:
    log.error("internal error in %s", where, exc_info=(type(exc), exc, exc.__traceback__))
