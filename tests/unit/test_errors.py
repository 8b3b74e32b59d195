"""One error table: every error type has a status, a stable wire name and a JSON body."""
from __future__ import annotations

import pytest

from mxserve.common import errors


@pytest.mark.parametrize("cls, status", [
    (errors.InvalidInput, 400), (errors.Unauthorized, 401), (errors.ModelNotFound, 404),
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
    rebuilt = errors.error_from_wire(error.type, "msg")
    assert type(rebuilt) is cls and rebuilt.message == "msg"


def test_unknown_wire_type_is_an_internal_error():
    assert type(errors.error_from_wire("Nope", "x")) is errors.InternalServerError


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
