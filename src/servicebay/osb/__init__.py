"""servicebay.osb — the Open Service Broker API v2.17 protocol, and nothing else.

Typed models of every object on the wire (catalog, requests, responses, errors, operation
states, context objects), the header names and version rule, and the one parameter validator
shared by the SDK, the platform and the CLI. No I/O happens here: ``servicebay.broker`` (the
broker side) and ``servicebay.client`` (the platform side) both build on this package, so they
can never disagree about the protocol.

Read an untrusted body with ``parse(Model, data)``; write one with ``model.to_wire()`` or
``model.to_json()``.
"""

from servicebay.osb._catalog import (
    Catalog,
    DashboardClient,
    InputParameters,
    MaintenanceInfo,
    Plan,
    Schemas,
    Service,
    ServiceBindingSchemas,
    ServiceInstanceSchemas,
)
from servicebay.osb._errors import (
    AsyncRequired,
    BadRequest,
    ConcurrencyError,
    Conflict,
    ErrorResponse,
    Gone,
    InternalError,
    InvalidParameters,
    MaintenanceInfoConflict,
    NotFound,
    OSBError,
    ParameterProblem,
    PreconditionFailed,
    RequiresApp,
    Unauthorized,
    UnprocessableEntity,
)
from servicebay.osb._identity import (
    CloudFoundryContext,
    Context,
    KubernetesContext,
    OriginatingIdentity,
    ServicebayContext,
    parse_context,
)
from servicebay.osb._metadata import Cost, PlanMetadata, ServiceMetadata
from servicebay.osb._parameters import (
    REDACTED,
    apply_defaults,
    check_schema,
    redact,
    sensitive_paths,
    validate_parameters,
)
from servicebay.osb._parse import parse
from servicebay.osb._requests import (
    BindRequest,
    BindResource,
    DeleteQuery,
    PreviousValues,
    ProvisionRequest,
    UpdateRequest,
)
from servicebay.osb._responses import (
    BindingMetadata,
    BindResponse,
    DeprovisionResponse,
    Endpoint,
    FetchBindingResponse,
    FetchInstanceResponse,
    InstanceMetadata,
    LastOperationResponse,
    OperationState,
    ProvisionResponse,
    UnbindResponse,
    UpdateResponse,
    VolumeDevice,
    VolumeMount,
)
from servicebay.osb._version import (
    API_VERSION,
    API_VERSION_HEADER,
    MIN_API_VERSION,
    ORIGINATING_IDENTITY_HEADER,
    REQUEST_IDENTITY_HEADER,
    check_api_version,
)
from servicebay.osb._wire import WireModel

__all__ = [
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
    "Unauthorized",
    "UnbindResponse",
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
]
