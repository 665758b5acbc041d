"""servicebay.client — the platform's side of the Open Service Broker API.

``BrokerClient`` makes typed calls to a broker for every OSB endpoint, with the version header,
basic or bearer auth, originating and request identities, timeouts, catalog caching
(ETag / If-Modified-Since), ``last_operation`` polling that honours ``Retry-After`` and the
plan's ``maximum_polling_duration``, and orphan mitigation decided exactly by the spec's table
(``orphan_mitigation``). Failures are ``ClientError``s (see ``_errors`` for the hierarchy).
"""

from servicebay.client._client import BrokerClient
from servicebay.client._errors import (
    BrokerError,
    BrokerTimeout,
    BrokerUnreachable,
    ClientError,
    MalformedResponse,
    PollingTimedOut,
    UnexpectedStatus,
)
from servicebay.client._identity import PLATFORM, user_identity
from servicebay.client._orphans import (
    OrphanMitigation,
    RequestKind,
    orphan_mitigation,
    orphan_mitigation_needed,
)
from servicebay.client._outcomes import (
    BindOutcome,
    DeprovisionOutcome,
    LastOperation,
    Outcome,
    ProvisionOutcome,
    UnbindOutcome,
    UpdateOutcome,
)
from servicebay.client._polling import PollingPolicy, ProgressCallback, parse_retry_after

__all__ = [
    "PLATFORM",
    "BindOutcome",
    "BrokerClient",
    "BrokerError",
    "BrokerTimeout",
    "BrokerUnreachable",
    "ClientError",
    "DeprovisionOutcome",
    "LastOperation",
    "MalformedResponse",
    "OrphanMitigation",
    "Outcome",
    "PollingPolicy",
    "PollingTimedOut",
    "ProgressCallback",
    "ProvisionOutcome",
    "RequestKind",
    "UnbindOutcome",
    "UnexpectedStatus",
    "UpdateOutcome",
    "orphan_mitigation",
    "orphan_mitigation_needed",
    "parse_retry_after",
    "user_identity",
]
