"""The self-test's own parts: parameter samples from schemas, and its independence from the SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from servicebay.conformance._report import Outcome, Recorder, Report
from servicebay.conformance._samples import invalid_sample, valid_sample, variant_sample
from servicebay.examples.sandbox import CATALOG

SCHEMA = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "properties": {
        "size": {"type": "integer", "minimum": 1, "maximum": 10, "default": 1},
        "tier": {"type": "string", "enum": ["small", "large"]},
        "name": {"type": "string", "maxLength": 5},
    },
    "required": ["tier", "name"],
    "additionalProperties": False,
}


def test_samples_are_valid_different_and_invalid_as_promised() -> None:
    """valid passes the schema; variant passes and differs; invalid fails at the named field."""
    valid = valid_sample(SCHEMA)
    variant = variant_sample(SCHEMA)
    invalid = invalid_sample(SCHEMA)
    assert valid == {"size": 1, "tier": "small", "name": "confo"}
    assert variant is not None and variant != valid
    jsonschema.validate(valid, SCHEMA)
    jsonschema.validate(variant, SCHEMA)
    assert invalid is not None and invalid.field == "size"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(invalid.parameters, SCHEMA)


def test_no_schema_means_empty_parameters_and_an_extra_key_variant() -> None:
    """Without a schema: {} is valid, a vendor key makes the variant, nothing is invalid."""
    assert valid_sample(None) == {}
    assert variant_sample(None) == {"conformance_variant": True}
    assert invalid_sample(None) is None


@pytest.mark.parametrize("plan", CATALOG.services[0].plans, ids=lambda p: p.name)
def test_every_sandbox_schema_yields_usable_samples(plan: object) -> None:
    """The self-test can drive every sandbox plan: valid, variant and invalid samples exist."""
    schema = plan.instance_create_schema()  # type: ignore[attr-defined]
    assert valid_sample(schema) is not None
    assert variant_sample(schema) is not None
    assert invalid_sample(schema) is not None


def test_report_fails_only_on_must_rules() -> None:
    """A missed SHOULD is a warning and keeps the run green; a missed MUST fails it."""
    rec = Recorder(prefix="x.")
    rec.check("a", "must hold", "S", True)
    rec.check("b", "should hold", "S", False, must=False)
    report = Report("http://broker", rec.results)
    assert report.ok and report.get("x.b").outcome is Outcome.WARN
    rec.check("c", "must hold", "S", False, "why")
    assert not report.ok and [r.check for r in report.failed] == ["x.c"]
    assert report.summary() == "1 passed, 1 failed, 1 warnings, 0 skipped"


def test_self_test_never_imports_the_sdk() -> None:
    """SDK and self-test meet only on the wire: the self-test loads no servicebay.broker."""
    code = (
        "import sys, servicebay.conformance, servicebay.cli.broker_check\n"
        "leaked = sorted(m for m in sys.modules if m.startswith('servicebay.broker'))\n"
        "assert not leaked, leaked\n"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_rendered_table_shows_ids_and_details_verbatim() -> None:
    """Brackets in check ids and JSON in details are printed as they are, not read as markup."""
    from io import StringIO

    from rich.console import Console

    rec = Recorder(prefix="plan[sandbox/sync].")
    rec.check("bind", "binds", "Binding", False, 'PUT /x -> 400 {"a": [1]} [bold]x[/bold]')
    out = StringIO()
    Report("http://b", rec.results).render(Console(file=out, width=300))
    text = out.getvalue()
    assert "plan[sandbox/sync].bind" in text
    assert '{"a": [1]} [bold]x[/bold]' in text
