"""The one error type of the server and its JSON shape. Every failure a client can cause is a
ServeError with an HTTP status and a message that names the problem; the API turns it (and the
framework's own errors) into `{"status": 404, "error": "Not Found", "message": "..."}`."""
from __future__ import annotations

from http import HTTPStatus


class ServeError(Exception):
    """A request the server cannot answer, with the status and the message the client gets."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = int(status), message


def error_body(status: int, message: str) -> dict:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return {"status": int(status), "error": phrase, "message": message}
