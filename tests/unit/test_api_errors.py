"""An error no handler of the API expects is answered in the API's shape and logged with its
traceback (Litestar's own answer was `{"status_code": 500, "detail": ...}`, logged nowhere)."""

from __future__ import annotations

import warnings

import structlog
from litestar import Litestar, get
from litestar.testing import TestClient

from services.api.app import create_app
from services.api.common import unexpected_response


def test_the_api_answers_every_unexpected_error_itself():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Litestar's deprecation notes about parameter styles
        app = create_app(lambda: None)
    assert app.exception_handlers[Exception] is unexpected_response


def test_an_unexpected_error_is_a_500_in_the_apis_shape_and_is_logged():
    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    app = Litestar([boom], exception_handlers={Exception: unexpected_response})
    with structlog.testing.capture_logs() as logs, TestClient(app) as client:
        answer = client.get("/boom")
    assert (answer.status_code, answer.json()) == (500, {"error": "internal error (RuntimeError)"})
    [entry] = [entry for entry in logs if entry["event"] == "api.unexpected_error"]
    assert entry["log_level"] == "error" and entry["path"] == "/boom" and isinstance(entry["exc_info"], RuntimeError)
