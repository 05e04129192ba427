"""The composition root: builds every service from the settings, once per server process."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from lmfoundry.access.keys import KeyStore
from lmfoundry.access.secrets import SecretBox, load_master_key
from lmfoundry.access.service import AccessService, Bootstrap
from lmfoundry.access.sessions import SessionCodec
from lmfoundry.catalog.service import CatalogService
from lmfoundry.config import Settings
from lmfoundry.deployments.endpoints import EndpointService
from lmfoundry.deployments.fleet import Fleet
from lmfoundry.deployments.resolve import ModelResolver
from lmfoundry.deployments.serverless import ServerlessService
from lmfoundry.metering.service import MeteringService
from lmfoundry.quotas.service import QuotaService, make_store
from lmfoundry.registry.service import RegistryService
from lmfoundry.runtime.local import LocalBackend
from lmfoundry.serving.endpoint import EndpointRouter
from lmfoundry.serving.gateway import Gateway
from lmfoundry.storage.db import Database


@dataclass
class Platform:
    settings: Settings
    db: Database
    box: SecretBox
    keys: KeyStore
    access: AccessService
    catalog: CatalogService
    registry: RegistryService
    resolver: ModelResolver
    serverless: ServerlessService
    endpoints: EndpointService
    fleet: Fleet
    router: EndpointRouter
    backend: LocalBackend
    quotas: QuotaService
    metering: MeteringService
    gateway: Gateway
    bootstrap: Bootstrap

    @classmethod
    def create(cls, settings: Settings) -> Platform:
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        db.migrate()
        box = SecretBox(load_master_key(settings.home, settings.master_key))
        keys = KeyStore(box)
        access = AccessService(db)
        bootstrap = access.bootstrap(settings.admin_token, settings.default_project)
        catalog = CatalogService(db, settings.home / "models")
        registry = RegistryService(db, catalog, settings.artifacts_dir)
        resolver = ModelResolver(catalog, registry)
        serverless = ServerlessService(db, resolver, keys, settings.base_url)
        endpoints = EndpointService(db, resolver, keys, settings.base_url)
        backend = LocalBackend(
            settings.home, settings.instance_start_timeout, settings.instance_idle_seconds
        )
        quotas = QuotaService(make_store(settings.redis_url, settings.quotas_enabled))
        metering = MeteringService(db, settings.metering_enabled)
        gateway = Gateway(settings, db, resolver, keys, backend, quotas, metering)
        fleet = Fleet(endpoints, resolver, backend, gateway.instance_spec)
        endpoints.on_change = fleet.changed
        router = EndpointRouter(gateway, endpoints, fleet)
        return cls(
            settings=settings,
            db=db,
            box=box,
            keys=keys,
            access=access,
            catalog=catalog,
            registry=registry,
            resolver=resolver,
            serverless=serverless,
            endpoints=endpoints,
            fleet=fleet,
            router=router,
            backend=backend,
            quotas=quotas,
            metering=metering,
            gateway=gateway,
            bootstrap=bootstrap,
        )

    @cached_property
    def sessions(self) -> SessionCodec:
        """Studio session cookies (sealed with a key derived from the master key)."""
        return SessionCodec(self.box)

    async def start(self) -> None:
        self.backend.start()
        self.metering.start()
        self.fleet.start()

    async def stop(self) -> None:
        await self.fleet.stop()
        await self.metering.stop()
        await self.backend.shutdown()
        await self.quotas.store.aclose()
        self.db.dispose()
