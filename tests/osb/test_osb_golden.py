"""Golden wire bodies: every valid fixture round-trips exactly; every malformed one is refused
with a message naming the offending field (fixtures in tests/fixtures/osb/)."""

import json
from pathlib import Path
from typing import Any

import pytest

from servicebay import osb

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "osb"
VALID = sorted((FIXTURES / "valid").glob("*.json"))
EXPECTED: dict[str, list[str]] = json.loads((FIXTURES / "malformed" / "expected.json").read_text())
MALFORMED = sorted(EXPECTED)

# Every model that travels on the wire has at least one valid golden body.
WIRE_MODELS = {
    "Catalog",
    "ProvisionRequest",
    "UpdateRequest",
    "BindRequest",
    "DeleteQuery",
    "ProvisionResponse",
    "UpdateResponse",
    "DeprovisionResponse",
    "FetchInstanceResponse",
    "BindResponse",
    "FetchBindingResponse",
    "UnbindResponse",
    "LastOperationResponse",
    "ErrorResponse",
    "CloudFoundryContext",
    "KubernetesContext",
    "ServicebayContext",
    "OriginatingIdentity",
    "ServiceMetadata",
    "PlanMetadata",
}


def _model(path: Path) -> Any:
    return getattr(osb, path.name.split(".")[0])


def test_every_wire_model_has_a_golden_body() -> None:
    """No wire model is left without a fixture."""
    covered = {p.name.split(".")[0] for p in VALID}
    assert covered >= WIRE_MODELS


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_body_round_trips_exactly(path: Path) -> None:
    """parse(body).to_wire() is the body itself, and to_json() decodes to the same."""
    body = json.loads(path.read_text())
    model = osb.parse(_model(path), path.read_bytes())
    assert model.to_wire() == body
    assert json.loads(model.to_json()) == body


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_unknown_extension_fields_are_ignored(path: Path) -> None:
    """A vendor extension field is accepted, and ignored (spec "Vendor Extension Fields")."""
    body = json.loads(path.read_text())
    model_type = _model(path)
    extended = {**body, "x-acme-extension": {"anything": [1, 2]}}
    if model_type.model_config.get("extra") == "allow":
        # Context objects keep platform properties (profile: platforms MAY add their own).
        assert osb.parse(model_type, extended).to_wire() == extended
    else:
        assert osb.parse(model_type, extended).to_wire() == body


def test_nested_extension_fields_are_ignored() -> None:
    """Extensions inside services, plans and schemas are ignored too."""
    body = json.loads((FIXTURES / "valid" / "Catalog.full.json").read_text())
    extended = json.loads(json.dumps(body))
    extended["services"][0]["x-vendor"] = True
    extended["services"][0]["plans"][0]["x-vendor"] = {"a": 1}
    extended["services"][0]["plans"][0]["schemas"]["x-vendor"] = 1
    extended["services"][0]["dashboard_client"]["x-vendor"] = "x"
    assert osb.Catalog.model_validate(extended).to_wire() == body


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_body_is_refused_naming_the_field(name: str) -> None:
    """Each malformed body gives BadRequest whose description names what is wrong."""
    model_type = getattr(osb, name.split(".")[0])
    with pytest.raises(osb.BadRequest) as info:
        osb.parse(model_type, (FIXTURES / "malformed" / name).read_bytes())
    assert info.value.http_status == 400
    for needle in EXPECTED[name]:
        assert needle in info.value.description


def test_every_malformed_fixture_is_listed() -> None:
    """No malformed fixture file is silently skipped."""
    files = {p.name for p in (FIXTURES / "malformed").glob("*.json")} - {"expected.json"}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_json_number_constants_are_refused(constant: bytes) -> None:
    """NaN and Infinity are not JSON: the body is refused rather than stored."""
    body = b'{"service_id": "s", "plan_id": "p", "parameters": {"size": ' + constant + b"}}"
    with pytest.raises(osb.BadRequest, match="not valid JSON"):
        osb.parse(osb.ProvisionRequest, body)
