"""Pins the public surface of servicebay.osb: a change here is a change of contract."""

import servicebay.osb as osb

EXPECTED = {
    "API_VERSION",
    "API_VERSION_HEADER",
    "MIN_API_VERSION",
    "ORIGINATING_IDENTITY_HEADER",
    "REDACTED",
    "REQUEST_IDENTITY_HEADER",
    "AsyncRequired",
    "BadRequest",
    "BindRequest",
    "BindResource",
    "BindResponse",
    "BindingMetadata",
    "Catalog",
    "CloudFoundryContext",
    "ConcurrencyError",
    "Conflict",
    "Context",
    "Cost",
    "DashboardClient",
    "DeleteQuery",
    "DeprovisionResponse",
    "Endpoint",
    "ErrorResponse",
    "FetchBindingResponse",
    "FetchInstanceResponse",
    "Gone",
    "InputParameters",
    "InstanceMetadata",
    "InternalError",
    "InvalidParameters",
    "KubernetesContext",
    "LastOperationResponse",
    "MaintenanceInfo",
    "MaintenanceInfoConflict",
    "NotFound",
    "OSBError",
    "OperationState",
    "OriginatingIdentity",
    "ParameterProblem",
    "Plan",
    "PlanMetadata",
    "PreconditionFailed",
    "PreviousValues",
    "ProvisionRequest",
    "ProvisionResponse",
    "RequiresApp",
    "Schemas",
    "Service",
    "ServiceBindingSchemas",
    "ServiceInstanceSchemas",
    "ServiceMetadata",
    "ServicebayContext",
    "UnbindResponse",
    "Unauthorized",
    "UnprocessableEntity",
    "UpdateRequest",
    "UpdateResponse",
    "VolumeDevice",
    "VolumeMount",
    "WireModel",
    "apply_defaults",
    "check_api_version",
    "check_schema",
    "parse",
    "parse_context",
    "redact",
    "sensitive_paths",
    "validate_parameters",
}


def test_osb_all_is_pinned() -> None:
    """The exported names are exactly the agreed ones."""
    assert set(osb.__all__) == EXPECTED
    assert len(osb.__all__) == len(EXPECTED)


def test_osb_every_export_exists_and_is_documented() -> None:
    """Every exported class and function resolves and has a docstring."""
    for name in osb.__all__:
        member = getattr(osb, name)
        if callable(member):
            assert member.__doc__, name


def test_osb_error_classes_live_in_errors_module() -> None:
    """The error hierarchy is importable from its documented module."""
    from servicebay.osb import _errors

    assert _errors.OSBError is osb.OSBError
    assert _errors.InvalidParameters is osb.InvalidParameters
