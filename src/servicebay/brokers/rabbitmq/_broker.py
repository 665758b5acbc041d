"""The RabbitMQ broker: a vhost per service instance, a user per binding.

Where it sits: the SDK (``servicebay.broker``) receives OSB requests, validates them, records
them and calls the methods below; they act on RabbitMQ through ``_management.ManagementAPI``.

Every method converges on RabbitMQ's actual state rather than trusting a previous call ran to
the end: names come from the OSB ids (``_names``), every step is a PUT or DELETE of a whole
object, so a provision or bind interrupted half-way (a crash, a failed request) is finished by
its retry, and a deprovision or unbind after it (the platform's orphan mitigation) removes what
it left. Credentials are generated once per binding and kept by the SDK, which answers a
retried bind from its records without calling ``bind`` again.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Mapping
from typing import Any, cast

import structlog

from servicebay import osb
from servicebay.broker import (
    BindDetails,
    BindResult,
    Broker,
    DeprovisionDetails,
    FetchBindingDetails,
    FetchBindingResult,
    FetchInstanceDetails,
    FetchInstanceResult,
    OperationContext,
    OperationFailed,
    ProvisionDetails,
    ProvisionResult,
    UnbindDetails,
    UpdateDetails,
    UpdateResult,
)
from servicebay.brokers.rabbitmq._catalog import PlanLimits, catalog, limits_of
from servicebay.brokers.rabbitmq._management import (
    LimitName,
    ManagementAPI,
    Permissions,
    QueueType,
)
from servicebay.brokers.rabbitmq._names import amqp_uri, user_name, user_prefix, vhost_name
from servicebay.brokers.rabbitmq._settings import (
    RabbitMQBrokerSettings,
    check_management_access,
)

__all__ = ["RabbitMQBroker"]

_logger = structlog.get_logger("servicebay.brokers.rabbitmq")

_PROVIDER = "servicebay"
_VHOST_TAG = "servicebay"
_LIMITS: tuple[tuple[str, LimitName], ...] = (
    ("max_connections", "max-connections"),
    ("max_queues", "max-queues"),
)


class RabbitMQBroker(Broker):
    """OSB broker handing out isolated, revocable RabbitMQ vhosts and users.

    ``settings`` default to ``RabbitMQBrokerSettings.from_env()`` at start-up; ``api`` lets a
    caller supply the management client (e.g. one with a different transport).
    """

    catalog = catalog()

    def __init__(
        self,
        settings: RabbitMQBrokerSettings | None = None,
        *,
        api: ManagementAPI | None = None,
    ) -> None:
        self._settings = settings
        self._api = api
        self._certificates: str | None = None

    # -- lifespan --------------------------------------------------------------------------

    @property
    def settings(self) -> RabbitMQBrokerSettings:
        """The settings in use (read from the environment on first use)."""
        if self._settings is None:
            self._settings = RabbitMQBrokerSettings.from_env()
        return self._settings

    @property
    def api(self) -> ManagementAPI:
        """The management API client."""
        if self._api is None:
            self._api = self.settings.management_api()
        return self._api

    async def startup(self) -> None:
        """Refuse to serve unless RabbitMQ's management API answers to our credentials."""
        settings = self.settings
        version = await check_management_access(settings, self.api)
        if settings.amqp_ca_file is not None:
            self._certificates = await asyncio.to_thread(settings.amqp_ca_file.read_text)
        _logger.info("rabbitmq broker ready", rabbitmq_version=version, **settings.describe())

    async def shutdown(self) -> None:
        """Close the management API's connections."""
        if self._api is not None:
            await self._api.aclose()
            self._api = None

    # -- instances -------------------------------------------------------------------------

    async def provision(self, details: ProvisionDetails, ctx: OperationContext) -> ProvisionResult:
        """Create the vhost with the plan's limits and the chosen default queue type."""
        vhost = vhost_name(self.settings.prefix, details.instance_id)
        limits = limits_of(details.plan)
        parameters = _with_plan_defaults(details.parameters, limits)
        queue_type = cast(QueueType, parameters["default_queue_type"])
        created = await self._put_vhost(vhost, details.instance_id, queue_type)
        if not created:  # left by an interrupted attempt, perhaps with other parameters
            created = await self._match_queue_type(vhost, details.instance_id, queue_type)
        try:
            await self._apply_limits(vhost, parameters)
        except Exception:
            # A failed provision changes nothing (the SDK forgets the instance, so the
            # platform's orphan mitigation finds nothing to deprovision): take the vhost back,
            # unless it held queues before this attempt.
            await self._undo(ctx, f"vhost {vhost!r}", self._drop_vhost(vhost, created))
            raise
        ctx.logger.info("vhost ready", vhost=vhost, queue_type=queue_type)
        return ProvisionResult()

    async def update(self, details: UpdateDetails, ctx: OperationContext) -> UpdateResult:
        """Change the vhost's limits (and check the plan's maxima when the plan changes)."""
        vhost = vhost_name(self.settings.prefix, details.instance_id)
        existing = await self.api.get_vhost(vhost)
        if existing is None:
            raise OperationFailed(f"vhost {vhost!r} no longer exists in RabbitMQ")
        current_type = existing.default_queue_type or "classic"
        wanted_type = details.parameters.get("default_queue_type", current_type)
        if wanted_type != current_type:
            raise osb.BadRequest(
                f"default_queue_type cannot change after provisioning (RabbitMQ fixes it when "
                f"the vhost is created): it is {current_type!r}, got {wanted_type!r}"
            )
        limits = limits_of(details.plan)
        parameters = {**details.previous_parameters, **details.parameters}
        if details.plan_changed:
            parameters = await self._fit_to_plan(parameters, limits, ctx)
        await self._apply_limits(vhost, _with_plan_defaults(parameters, limits))
        return UpdateResult()

    async def deprovision(self, details: DeprovisionDetails, ctx: OperationContext) -> None:
        """Delete every user the broker created for the instance, then its vhost."""
        prefix = user_prefix(self.settings.prefix, details.instance_id)
        vhost = vhost_name(self.settings.prefix, details.instance_id)
        # Deleting a vhost closes every connection into it (RabbitMQ does this itself), and
        # leaves its users without rights; they are found by name meanwhile.
        all_users, _ = await asyncio.gather(self.api.list_users(), self.api.delete_vhost(vhost))
        users = [u.name for u in all_users if u.name.startswith(prefix)]
        await asyncio.gather(*(self._revoke(name) for name in users))
        ctx.logger.info("vhost deleted", vhost=vhost, users=len(users))

    async def fetch_instance(
        self, details: FetchInstanceDetails, ctx: OperationContext
    ) -> FetchInstanceResult | None:
        """Report the limits and queue type RabbitMQ actually has for the vhost."""
        vhost = vhost_name(self.settings.prefix, details.instance_id)
        existing, limits = await asyncio.gather(
            self.api.get_vhost(vhost), self.api.get_vhost_limits(vhost)
        )
        if existing is None:
            raise osb.NotFound(f"vhost {vhost!r} does not exist in RabbitMQ")
        parameters: dict[str, Any] = {
            "default_queue_type": existing.default_queue_type or "classic"
        }
        for key, limit in _LIMITS:
            if limits.get(limit, -1) >= 0:  # a negative limit means "none"
                parameters[key] = limits[limit]
        return FetchInstanceResult(parameters=parameters)

    # -- bindings --------------------------------------------------------------------------

    async def bind(self, details: BindDetails, ctx: OperationContext) -> BindResult:
        """Create the binding's user with a fresh random password and rights on the vhost only.

        Reached only when the SDK holds no credentials for this binding, so no one can be using
        a password set here before: setting it again on a retry resets nothing in use.
        """
        settings = self.settings
        vhost = vhost_name(settings.prefix, details.instance_id)
        username = user_name(settings.prefix, details.instance_id, details.binding_id)
        password = secrets.token_urlsafe(32)
        # With a management URL to hand out, the user may log in there (its own vhost only).
        tags = ("management",) if settings.public_management_url else ()
        await self.api.put_user(username, password, tags=tags)
        try:
            await self.api.set_permissions(Permissions(user=username, vhost=vhost))
        except Exception as exc:
            # A failed bind changes nothing: the SDK forgets the binding, so no unbind will come.
            await self._undo(ctx, f"user {username!r}", self.api.delete_user(username))
            if isinstance(exc, osb.BadRequest) and await self.api.get_vhost(vhost) is None:
                raise OperationFailed(f"vhost {vhost!r} no longer exists in RabbitMQ") from None
            raise
        ctx.logger.info(
            "user bound",
            vhost=vhost,
            user=username,
            rotates=details.predecessor_binding_id is not None,
        )
        return BindResult(credentials=self._credentials(vhost, username, password))

    async def unbind(self, details: UnbindDetails, ctx: OperationContext) -> None:
        """Delete the binding's user and close its open connections."""
        username = user_name(self.settings.prefix, details.instance_id, details.binding_id)
        await self._revoke(username)
        ctx.logger.info("user revoked", user=username)

    async def fetch_binding(
        self, details: FetchBindingDetails, ctx: OperationContext
    ) -> FetchBindingResult | None:
        """Confirm RabbitMQ still has the binding's user with rights on the vhost.

        The password is not readable from RabbitMQ, so the SDK answers with its records.
        """
        vhost = vhost_name(self.settings.prefix, details.instance_id)
        username = user_name(self.settings.prefix, details.instance_id, details.binding_id)
        if await self.api.get_permissions(vhost, username) is None:
            raise osb.NotFound(f"user {username!r} has no access to vhost {vhost!r} in RabbitMQ")
        return None

    # -- steps -----------------------------------------------------------------------------

    async def _put_vhost(self, vhost: str, instance_id: str, queue_type: QueueType) -> bool:
        """Create the instance's vhost; False if it already existed."""
        return await self.api.put_vhost(
            vhost,
            description=f"servicebay instance {instance_id}",
            tags=(_VHOST_TAG,),
            default_queue_type=queue_type,
        )

    async def _match_queue_type(self, vhost: str, instance_id: str, queue_type: QueueType) -> bool:
        """Make an existing vhost's queue type the wanted one; True if it was recreated.

        RabbitMQ cannot change a vhost's queue type, so an empty vhost is recreated; one that
        holds queues is not the broker's to drop.
        """
        existing = await self.api.get_vhost(vhost)
        if existing is not None and (existing.default_queue_type or "classic") == queue_type:
            return False
        if existing is not None:
            if await self.api.count_queues(vhost):
                raise osb.Conflict(
                    f"vhost {vhost!r} already exists with default queue type "
                    f"{existing.default_queue_type or 'classic'!r} and holds queues"
                )
            await self.api.delete_vhost(vhost)
        return await self._put_vhost(vhost, instance_id, queue_type)

    async def _apply_limits(self, vhost: str, parameters: Mapping[str, Any]) -> None:
        """Give the vhost both limits in one request (a limit given as None is cleared)."""
        limits = {
            limit: int(parameters[key]) for key, limit in _LIMITS if parameters.get(key) is not None
        }
        await self.api.set_vhost_limits(vhost, limits)

    async def _fit_to_plan(
        self, parameters: Mapping[str, Any], limits: PlanLimits, ctx: OperationContext
    ) -> dict[str, Any]:
        """Lower limits the new plan does not allow to its maximum, saying so."""
        fitted = dict(parameters)
        for key, maximum in (
            ("max_connections", limits.connections_max),
            ("max_queues", limits.queues_max),
        ):
            value = fitted.get(key)
            if isinstance(value, int) and value > maximum:
                fitted[key] = maximum
                await ctx.progress(f"{key} lowered to {maximum}, the maximum of plan {limits.name}")
        return fitted

    async def _drop_vhost(self, vhost: str, created: bool) -> None:
        """Delete a vhost this attempt created, or an earlier attempt left empty."""
        if created or not await self.api.count_queues(vhost):
            await self.api.delete_vhost(vhost)

    async def _undo(self, ctx: OperationContext, what: str, step: Awaitable[object]) -> None:
        """Roll back one step of a failed operation, keeping the operation's own error.

        If the rollback fails too, it is logged and left: a retry of the operation converges on
        what is there, and deprovision finds every user of an instance by name.
        """
        try:
            await step
        except Exception as exc:
            ctx.logger.warning("rollback failed", what=what, error=str(exc))

    async def _revoke(self, username: str) -> None:
        """Delete the user, then close whatever connections it still has.

        Deleting first means no new login can slip in between. RabbitMQ (3.7.0 onward) also
        closes a deleted user's connections itself, but both that close and this one find them
        in its connection tracking, where a new connection is registered asynchronously
        (3.10's ``rabbit_connection_tracking:update_tracked/1`` spawns the write): one opened
        just before the deletion can be missing from it then and be there a moment later.
        """
        await self.api.delete_user(username)
        await self.api.close_user_connections(username, reason="credentials revoked (unbind)")

    def _credentials(self, vhost: str, username: str, password: str) -> dict[str, Any]:
        """servicebinding.io well-known entries (spec "Well-known Secret Entries")."""
        settings = self.settings
        host, port = settings.handed_out_host, settings.handed_out_port
        credentials: dict[str, Any] = {
            "type": "rabbitmq",
            "provider": _PROVIDER,
            "host": host,
            "port": port,
            "username": username,
            "password": password,
            "vhost": vhost,
            "uri": amqp_uri(
                tls=settings.amqps,
                host=host,
                port=port,
                username=username,
                password=password,
                vhost=vhost,
            ),
        }
        if settings.public_management_url:
            credentials["management-uri"] = settings.public_management_url
        if self._certificates:
            credentials["certificates"] = self._certificates
        return credentials


def _with_plan_defaults(parameters: Mapping[str, Any], limits: PlanLimits) -> dict[str, Any]:
    """Parameters with the plan's defaults for anything not given (the SDK usually did this)."""
    return {
        "max_connections": limits.connections_default,
        "max_queues": limits.queues_default,
        "default_queue_type": "classic",
        **{k: v for k, v in parameters.items() if v is not None},
    }
