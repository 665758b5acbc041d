"""A complete OSB broker: one service, one plan, a fresh API key for every binding."""

import secrets

from servicebay import broker as sb
from servicebay.osb import Catalog, Plan, Service

Ctx = sb.OperationContext
SERVICE = Service(
    id="8b9e1c52-2f1a-4c1e-9a57-0d5d3f6c1a01",
    name="keys",
    description="API keys for the imaginary Keys service.",
    bindable=True,
    plans=[Plan(id="8b9e1c52-2f1a-4c1e-9a57-0d5d3f6c1a02", name="free", description="Free keys.")],
)


class KeyBroker(sb.Broker):
    """Provision a tenant, hand out one key per binding; the SDK does the rest."""

    catalog = Catalog(services=[SERVICE])

    async def provision(self, details: sb.ProvisionDetails, ctx: Ctx) -> sb.ProvisionResult:
        """Create the tenant (here: nothing to do) and point to its dashboard."""
        return sb.ProvisionResult(dashboard_url=f"https://keys.example/t/{details.instance_id}")

    async def deprovision(self, details: sb.DeprovisionDetails, ctx: Ctx) -> None:
        """Delete the tenant."""

    async def bind(self, details: sb.BindDetails, ctx: Ctx) -> sb.BindResult:
        """A new random key; a retried bind gets the same one back from the SDK's records."""
        key = secrets.token_urlsafe(24)
        return sb.BindResult(credentials={"url": "https://keys.example/api", "key": key})

    async def unbind(self, details: sb.UnbindDetails, ctx: Ctx) -> None:
        """Revoke the binding's key."""


broker = KeyBroker()
