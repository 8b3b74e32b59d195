"""One error table: every error type has a status, a stable wire name and a JSON body."""
from __future__ import annotations

import pytest

from mxserve.common import errors


@pytest.mark.parametrize("cls, status", [
    (errors.InvalidInput, 400), (errors.Unauthorized, 401), (errors.ModelNotFound, 404),
    (errors.NotFound, 404),
    (errors.MethodNotAllowed, 405), (errors.PayloadTooLarge, 413),
    (errors.UnsupportedMediaType, 415), (errors.ModelError, 500),
    (errors.InternalServerError, 500), (errors.ServiceUnavailable, 503),
    (errors.DeadlineExceeded, 504), (errors.ArchiveError, 400),
])
def test_status_table(cls, status):
    error = cls("msg")
    assert error.status == status
    assert error.to_dict("rid") == {"code": status, "type": cls.type, "message": "msg",
                                    "request_id": "rid"}
    rebuilt = errors.error_from_wire(error.to_wire())
    assert type(rebuilt) is cls and rebuilt.message == "msg"


def test_retry_after_crosses_the_wire():
    sent = errors.ServiceUnavailable("busy", retry_after_s=30)
    assert errors.error_from_wire(sent.to_wire()).retry_after_s == 30
    for bad in (-1, "30", 10**9, None, True):
        wire = {**sent.to_wire(), "retry_after_s": bad}
        assert errors.error_from_wire(wire).retry_after_s == 1


@pytest.mark.parametrize("raw", [{"type": "Nope", "message": "x"}, {"type": "InvalidInput"},
                                 "InvalidInput", None, {"message": 3}])
def test_unknown_or_malformed_wire_errors_are_internal_errors(raw):
    assert type(errors.error_from_wire(raw)) is errors.InternalServerError


def test_every_subclass_is_in_the_table():
    def walk(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from walk(sub)

    for cls in walk(errors.MXServeError):
        assert cls.type in errors.HTTP_STATUS, cls


def test_exit_codes_are_distinct():
    codes = [errors.EXIT_OK, errors.EXIT_CRASH, errors.EXIT_BAD_CONFIG, errors.EXIT_MODEL_LOAD]
    assert len(set(codes)) == len(codes)
