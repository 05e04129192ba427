"""The composition root: builds every service from the settings, once per server process."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cached_property

from lmfoundry.access.keys import KeyStore
from lmfoundry.access.projects import ProjectService
from lmfoundry.access.secrets import SecretBox, load_master_key
from lmfoundry.access.service import AccessService, Bootstrap
from lmfoundry.access.sessions import SessionCodec
from lmfoundry.catalog.service import CatalogService
from lmfoundry.config import Settings
from lmfoundry.connections.service import ConnectionService
from lmfoundry.connections.targets import EndpointTargets, ServerlessTargets
from lmfoundry.datasets.service import DatasetService
from lmfoundry.deployments.endpoints import KIND as ENDPOINT
from lmfoundry.deployments.endpoints import EndpointService
from lmfoundry.deployments.fleet import Fleet
from lmfoundry.deployments.resolve import ModelResolver
from lmfoundry.deployments.serverless import KIND as SERVERLESS
from lmfoundry.deployments.serverless import ServerlessService
from lmfoundry.finetune.service import FineTuneService
from lmfoundry.finetune.supervisor import JobSupervisor
from lmfoundry.flows.runs import RunService
from lmfoundry.flows.service import FlowService
from lmfoundry.metering.service import MeteringService
from lmfoundry.observability.health import Health
from lmfoundry.observability.metrics import Metrics
from lmfoundry.observability.monitoring import Monitoring
from lmfoundry.quotas.projects import ProjectQuotas
from lmfoundry.quotas.service import QuotaService, make_store
from lmfoundry.registry.imports import ImportPolicy
from lmfoundry.registry.service import RegistryService
from lmfoundry.responses.service import ResponsesService
from lmfoundry.responses.store import ResponseStore
from lmfoundry.runtime.backend import Backend
from lmfoundry.runtime.directory import InstanceDirectory
from lmfoundry.runtime.llama_server import cpu_count
from lmfoundry.runtime.local import LocalBackend
from lmfoundry.runtime.ray_jobs import RayJobLauncher
from lmfoundry.runtime.ray_serve import RayBackend, RayCluster, ReplicaSettings
from lmfoundry.runtime.remote import RemoteBackend
from lmfoundry.serving.gateway import Gateway
from lmfoundry.serving.plane import DataPlane
from lmfoundry.storage.db import Database


@dataclass
class Platform:
    settings: Settings
    db: Database
    box: SecretBox
    keys: KeyStore
    access: AccessService
    projects: ProjectService
    catalog: CatalogService
    registry: RegistryService
    resolver: ModelResolver
    serverless: ServerlessService
    endpoints: EndpointService
    fleet: Fleet
    backend: Backend
    quotas: QuotaService
    metering: MeteringService
    gateway: Gateway
    data_plane: DataPlane
    responses: ResponsesService
    bootstrap: Bootstrap
    connections: ConnectionService
    flows: FlowService
    runs: RunService
    datasets: DatasetService
    finetune: FineTuneService
    jobs: JobSupervisor
    project_quotas: ProjectQuotas
    metrics: Metrics
    health: Health

    @classmethod
    def create(cls, settings: Settings) -> Platform:
        settings.home.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url, settings.database_busy_seconds)
        db.migrate()
        box = SecretBox(load_master_key(settings.home, settings.master_key))
        keys = KeyStore(box)
        access = AccessService(db, token_ttl_days=settings.token_ttl_days)
        projects = ProjectService(
            db,
            access,
            allow_self_service_projects=settings.allow_self_service_projects,
            flows_enabled_by_default=settings.flows_enabled_by_default,
        )
        bootstrap = access.bootstrap(settings.admin_token, settings.default_project)
        catalog = CatalogService(db, settings.home / "models")
        registry = RegistryService(
            db,
            catalog,
            settings.artifacts_dir,
            imports=ImportPolicy(
                tuple(settings.import_roots),
                settings.home,
                settings.import_max_bytes,
                settings.import_max_files,
            ),
        )
        resolver = ModelResolver(catalog, registry)
        serverless = ServerlessService(db, resolver, keys, settings.base_url)
        endpoints = EndpointService(db, resolver, keys, settings.base_url)
        directory = InstanceDirectory(db, uuid.uuid4().hex)
        backend: Backend
        ray_cluster: RayCluster | None = None
        if settings.ray_address:
            ray_cluster = RayCluster(settings.ray_address, settings.ray_dashboard_url)
            backend = RayBackend(
                ray_cluster,
                settings.instance_start_timeout,
                settings.instance_idle_seconds,
                owner=settings.supervisor,
                directory=directory,
                replica_settings=ReplicaSettings(
                    max_ongoing_requests=max(64, settings.engine_max_sequences * 4)
                ),
            )
        elif settings.supervisor:
            backend = LocalBackend(
                settings.home,
                settings.instance_start_timeout,
                settings.instance_idle_seconds,
                directory,
            )
        else:
            backend = RemoteBackend(directory, settings.instance_start_timeout)
        quotas = QuotaService(make_store(settings.redis_url, settings.quotas_enabled))
        metering = MeteringService(db, settings.metering_enabled, settings.redis_url)
        metrics = Metrics(db)  # this app's own registry: GET /metrics
        gateway = Gateway(settings, db, resolver, backend, quotas, metering, metrics)
        fleet = Fleet(
            endpoints, resolver, backend, gateway.instance_spec, owner=settings.supervisor
        )
        endpoints.on_change = fleet.changed
        connections = ConnectionService(db, box)
        connections.register_target(SERVERLESS, ServerlessTargets(db, serverless, keys))
        connections.register_target(ENDPOINT, EndpointTargets(db, endpoints, keys))
        flows = FlowService(db, settings, connections, keys)
        runs = RunService(db, settings, flows)
        responses = ResponsesService(ResponseStore(db))
        data_plane = DataPlane(db, keys, serverless, endpoints, fleet, gateway, responses, flows)
        datasets = DatasetService(db, catalog, settings.artifacts_dir)
        finetune = FineTuneService(
            db,
            catalog,
            datasets,
            settings.artifacts_dir,
            settings.jobs_dir,
            settings.home / "models",
            settings.job_checkpoint_steps,
        )
        registry.jobs = finetune  # `models register --from-job`
        jobs = JobSupervisor(
            db,
            settings.jobs_dir,
            settings.resolved_database_url,
            settings.max_concurrent_jobs,
            settings.job_max_restarts,
            settings.job_threads,
            launcher=RayJobLauncher(ray_cluster) if ray_cluster is not None else None,
        )
        # Per-project quotas, checked where a project creates what they bound.
        project_quotas = ProjectQuotas(
            db, settings, quotas.store, settings.engine_threads or cpu_count()
        )
        for service in (serverless, endpoints, flows, runs, datasets, finetune, registry):
            service.project_quotas = project_quotas
        return cls(
            settings=settings,
            db=db,
            box=box,
            keys=keys,
            access=access,
            projects=projects,
            catalog=catalog,
            registry=registry,
            resolver=resolver,
            serverless=serverless,
            endpoints=endpoints,
            fleet=fleet,
            backend=backend,
            quotas=quotas,
            metering=metering,
            gateway=gateway,
            data_plane=data_plane,
            responses=responses,
            bootstrap=bootstrap,
            connections=connections,
            flows=flows,
            runs=runs,
            datasets=datasets,
            finetune=finetune,
            jobs=jobs,
            project_quotas=project_quotas,
            metrics=metrics,
            health=Health(db, quotas.store, backend, settings.supervisor),
        )

    @cached_property
    def sessions(self) -> SessionCodec:
        """Studio session cookies (sealed with a key derived from the master key)."""
        return SessionCodec(self.box)

    @cached_property
    def monitoring(self) -> Monitoring:
        """The studio's monitoring pages and `lmfoundry status` (the ledger, instances)."""
        return Monitoring(self.db, self.metering, self.backend)

    async def start(self) -> None:
        self.backend.start()
        self.metering.start()
        self.fleet.start()
        self.monitoring.start()  # samples the instances this process sees
        if self.settings.supervisor:
            # one process runs flow runs and fine-tuning jobs; --no-supervisor gateways serve only
            self.runs.start()
            self.jobs.start()

    async def stop(self) -> None:
        if self.settings.supervisor:
            await self.jobs.stop()  # stops job processes; their jobs resume on the next start
            await self.runs.stop()
        await self.fleet.stop()
        await self.monitoring.stop()
        await self.metering.stop()
        await self.backend.shutdown()
        await self.quotas.store.aclose()
        self.db.dispose()
