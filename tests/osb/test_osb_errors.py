"""The error hierarchy: status codes, spec error codes, wire bodies and the way back."""

import pytest

from servicebay import osb

CASES = [
    (osb.BadRequest, 400, None),
    (osb.InvalidParameters, 400, None),
    (osb.Unauthorized, 401, None),
    (osb.NotFound, 404, None),
    (osb.Conflict, 409, None),
    (osb.Gone, 410, None),
    (osb.PreconditionFailed, 412, None),
    (osb.UnprocessableEntity, 422, None),
    (osb.AsyncRequired, 422, "AsyncRequired"),
    (osb.ConcurrencyError, 422, "ConcurrencyError"),
    (osb.RequiresApp, 422, "RequiresApp"),
    (osb.MaintenanceInfoConflict, 422, "MaintenanceInfoConflict"),
    (osb.InternalError, 500, None),
]


@pytest.mark.parametrize(("klass", "status", "code"), CASES)
def test_each_error_knows_status_and_spec_code(
    klass: type[osb.OSBError], status: int, code: str | None
) -> None:
    """Status and error code are the spec's; every error is an OSBError with an exit code."""
    error = klass("it went wrong")
    assert error.http_status == status
    assert error.error_code == code
    assert isinstance(error, osb.OSBError)
    assert error.exit_code > 0
    assert str(error) == "it went wrong"


@pytest.mark.parametrize(("klass", "status", "code"), CASES)
def test_error_body_round_trips_to_the_same_class(
    klass: type[osb.OSBError], status: int, code: str | None
) -> None:
    """from_response(to_response()) restores class, description and flags."""
    error = klass("nope", instance_usable=False, update_repeatable=True)
    body = error.to_response().to_wire()
    assert body.get("error") == code
    back = osb.OSBError.from_response(status, body)
    # InvalidParameters travels as a plain 400: its problems are in the description.
    expected = osb.BadRequest if klass is osb.InvalidParameters else klass
    assert type(back) is expected
    assert back.description == "nope"
    assert back.instance_usable is False
    assert back.update_repeatable is True


def test_error_body_leaves_out_absent_fields() -> None:
    """A plain error body has only a description; flags appear only when set."""
    assert osb.Conflict("exists").to_response().to_wire() == {"description": "exists"}
    assert osb.AsyncRequired("needs async").to_response().to_wire() == {
        "error": "AsyncRequired",
        "description": "needs async",
    }


def test_unknown_422_code_maps_to_unprocessable_entity() -> None:
    """A 422 with an error code the spec does not name is still a 422 error."""
    error = osb.OSBError.from_response(422, {"error": "QuotaExceeded", "description": "full"})
    assert type(error) is osb.UnprocessableEntity
    assert error.description == "full"


@pytest.mark.parametrize("status", [403, 405, 418, 429, 502, 503])
def test_status_outside_the_hierarchy_keeps_its_status(status: int) -> None:
    """A status no class names gives an OSBError carrying that status."""
    error = osb.OSBError.from_response(status, {"error": "Whatever", "description": "d"})
    assert type(error) is osb.OSBError
    assert error.http_status == status
    assert error.error_code == "Whatever"


@pytest.mark.parametrize("body", [None, "text", [1], {"description": 5, "instance_usable": "no"}])
def test_garbage_error_body_still_gives_an_error(body: object) -> None:
    """An unreadable error body yields an error naming the status; wrong types are dropped."""
    error = osb.OSBError.from_response(409, body)
    assert type(error) is osb.Conflict
    assert "409" in error.description
    assert error.instance_usable is None


def test_invalid_parameters_carries_problems() -> None:
    """InvalidParameters lists each problem with path, rule and message."""
    problem = osb.ParameterProblem("size", "maximum", "size: must be <= 10 (got 11)")
    error = osb.InvalidParameters("invalid parameters", problems=[problem])
    assert isinstance(error, osb.BadRequest)
    assert error.problems == [problem]
    assert osb.InvalidParameters("x").problems == []
