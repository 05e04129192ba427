"""The Python SDK: a thin client of the management API (the CLI uses it too).

from lmfoundry.client import Client
lmf = Client()                       # URL and token from $LMFOUNDRY_HOME/credentials
dep = lmf.create_serverless("my-smol", "SmolLM2-135M-Instruct")
keys = lmf.serverless_keys("my-smol")
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter

from lmfoundry import errors
from lmfoundry.access.models import (
    AuditEventView,
    Keys,
    Me,
    MemberView,
    NewToken,
    NewUser,
    ProjectView,
    TokenView,
    UserView,
)
from lmfoundry.catalog.models import CardView
from lmfoundry.client.base import raise_for
from lmfoundry.client.flows import FlowsClient
from lmfoundry.datasets.models import DatasetView
from lmfoundry.deployments.models import DeploymentView, EndpointView, ServerlessView
from lmfoundry.finetune.models import EventList, FollowedEvent, JobEnd, JobView
from lmfoundry.metering.models import UsageRow
from lmfoundry.observability.models import InstanceView, TargetSummary
from lmfoundry.quotas.models import ProjectQuotasView
from lmfoundry.registry.models import ModelVersionView

_FOLLOWED: TypeAdapter[FollowedEvent] = TypeAdapter(FollowedEvent)


class Client(FlowsClient):
    """One method per management API operation (connections, flows and runs come from
    `FlowsClient`); each returns the view the server's service answers with (`ServerlessView`,
    `JobView`, ...) and raises lmfoundry's exceptions."""

    # -- identity, projects ------------------------------------------------------------------

    def me(self) -> Me:
        return self._one(Me, "GET", "/me")

    def projects(self) -> list[ProjectView]:
        return self._many(ProjectView, "GET", "/projects")

    def create_project(self, name: str, description: str = "") -> ProjectView:
        return self._one(
            ProjectView, "POST", "/projects", json={"name": name, "description": description}
        )

    def set_flows_enabled(self, enabled: bool, project: str | None = None) -> ProjectView:
        """Switch flows on or off in a project (owners and admins)."""
        return self._one(ProjectView, "PATCH", self._p(project), json={"flows_enabled": enabled})

    def members(self, project: str | None = None) -> list[MemberView]:
        return self._many(MemberView, "GET", self._p(project) + "/members")

    def set_member(self, user: str, role: str, project: str | None = None) -> MemberView:
        return self._one(
            MemberView, "PUT", self._p(project) + f"/members/{user}", json={"role": role}
        )

    def remove_member(self, user: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/members/{user}")

    def create_user(self, name: str, is_admin: bool = False) -> NewUser:
        """A new user and their first token (shown once)."""
        return self._one(NewUser, "POST", "/users", json={"name": name, "is_admin": is_admin})

    def users(self) -> list[UserView]:
        return self._many(UserView, "GET", "/users")

    def disable_user(self, name: str) -> UserView:
        return self._one(UserView, "POST", f"/users/{quote(name, safe='')}/disable")

    def enable_user(self, name: str) -> UserView:
        return self._one(UserView, "POST", f"/users/{quote(name, safe='')}/enable")

    def delete_user(self, name: str) -> None:
        self._call("DELETE", f"/users/{quote(name, safe='')}")

    def create_token(
        self,
        name: str,
        expires_in_days: int | None = None,
        user: str | None = None,
        metrics: bool = False,
    ) -> NewToken:
        """A new token (shown once); `metrics=True`: one that reads only GET /metrics."""
        body: dict[str, Any] = {"name": name}
        if metrics:
            body["scope"] = "metrics"
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        if user is not None:
            body["user"] = user
        return self._one(NewToken, "POST", "/tokens", json=body)

    def tokens(self, user: str | None = None, all_users: bool = False) -> list[TokenView]:
        """Your tokens (never the tokens themselves); admins: `user`'s or everyone's."""
        params: dict[str, Any] = {"all": "true"} if all_users else {}
        if user is not None:
            params["user"] = user
        return self._many(TokenView, "GET", "/tokens", params=params)

    def revoke_token(self, name: str, user: str | None = None) -> None:
        params = {"user": user} if user is not None else {}
        self._call("DELETE", f"/tokens/{quote(name, safe='')}", params=params)

    def audit(self, project: str | None = None, limit: int = 200) -> list[AuditEventView]:
        return self._many(
            AuditEventView, "GET", self._p(project) + "/audit", params={"limit": limit}
        )

    def quotas(self, project: str | None = None) -> ProjectQuotasView:
        """The project's quotas: each limit with its current use."""
        return self._one(ProjectQuotasView, "GET", self._p(project) + "/quotas")

    def set_quotas(
        self, changes: dict[str, int | None], project: str | None = None
    ) -> ProjectQuotasView:
        """Set project quotas (admins); None puts a quota back to the server's default."""
        return self._one(
            ProjectQuotasView, "PUT", self._p(project) + "/quotas", json={"quotas": changes}
        )

    # -- catalog -----------------------------------------------------------------------------

    def catalog(self) -> list[CardView]:
        return self._many(CardView, "GET", "/catalog")

    def card(self, model: str) -> CardView:
        return self._one(CardView, "GET", f"/catalog/{model}")

    def import_model(self, path: str, model_id: str | None = None) -> CardView:
        body = {"path": str(Path(path).expanduser().resolve()), "id": model_id}
        return self._one(CardView, "POST", "/catalog/import", json=body)

    def remove_import(self, model: str) -> None:
        self._call("DELETE", f"/catalog/{model}")

    # -- serverless deployments --------------------------------------------------------------

    def create_serverless(
        self, name: str, model: str, project: str | None = None, **quota: Any
    ) -> ServerlessView:
        body = {"name": name, "model": model, **{k: v for k, v in quota.items() if v is not None}}
        return self._one(
            ServerlessView, "POST", self._p(project) + "/serverless-deployments", json=body
        )

    def serverless(self, project: str | None = None) -> list[ServerlessView]:
        return self._many(ServerlessView, "GET", self._p(project) + "/serverless-deployments")

    def get_serverless(self, name: str, project: str | None = None) -> ServerlessView:
        return self._one(
            ServerlessView, "GET", self._p(project) + f"/serverless-deployments/{name}"
        )

    def update_serverless(
        self, name: str, project: str | None = None, **changes: Any
    ) -> ServerlessView:
        return self._one(
            ServerlessView,
            "PATCH",
            self._p(project) + f"/serverless-deployments/{name}",
            json=changes,
        )

    def delete_serverless(self, name: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/serverless-deployments/{name}")

    def serverless_keys(self, name: str, project: str | None = None) -> Keys:
        return self._one(Keys, "GET", self._p(project) + f"/serverless-deployments/{name}/keys")

    def regenerate_serverless_key(
        self, name: str, key_type: str, project: str | None = None
    ) -> Keys:
        return self._one(
            Keys,
            "POST",
            self._p(project) + f"/serverless-deployments/{name}/keys/regenerate",
            json={"key_type": key_type},
        )

    # -- model registry ----------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        from_job: str | None = None,
        path: str | None = None,
        base_model: str | None = None,
        description: str = "",
        project: str | None = None,
    ) -> ModelVersionView:
        body: dict[str, Any] = {"name": name, "description": description}
        if from_job:
            body["from_job"] = from_job
        if path:
            body["path"] = str(Path(path).expanduser().resolve())
        if base_model:
            body["base_model"] = base_model
        return self._one(ModelVersionView, "POST", self._p(project) + "/models", json=body)

    def registered_models(
        self, name: str | None = None, project: str | None = None
    ) -> list[ModelVersionView]:
        params = {"name": name} if name else None
        return self._many(ModelVersionView, "GET", self._p(project) + "/models", params=params)

    def registered_model(self, ref: str, project: str | None = None) -> ModelVersionView:
        return self._one(ModelVersionView, "GET", self._p(project) + f"/models/{ref}")

    def delete_registered_model(self, ref: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/models/{ref}")

    # -- online endpoints --------------------------------------------------------------------

    def create_endpoint(
        self, name: str, description: str = "", project: str | None = None
    ) -> EndpointView:
        return self._one(
            EndpointView,
            "POST",
            self._p(project) + "/online-endpoints",
            json={"name": name, "auth_mode": "key", "description": description},
        )

    def endpoints(self, project: str | None = None) -> list[EndpointView]:
        return self._many(EndpointView, "GET", self._p(project) + "/online-endpoints")

    def endpoint(self, name: str, project: str | None = None) -> EndpointView:
        return self._one(EndpointView, "GET", self._p(project) + f"/online-endpoints/{name}")

    def delete_endpoint(self, name: str, project: str | None = None) -> None:
        self._call("DELETE", self._p(project) + f"/online-endpoints/{name}")

    def put_endpoint_deployment(
        self,
        endpoint: str,
        deployment: str,
        model: str,
        instance_count: int = 1,
        request_settings: dict[str, int] | None = None,
        project: str | None = None,
    ) -> DeploymentView:
        body: dict[str, Any] = {"model": model, "instance_count": instance_count}
        if request_settings:
            body["request_settings"] = request_settings
        return self._one(
            DeploymentView,
            "PUT",
            self._p(project) + f"/online-endpoints/{endpoint}/deployments/{deployment}",
            json=body,
        )

    def endpoint_deployments(
        self, endpoint: str, project: str | None = None
    ) -> list[DeploymentView]:
        return self._many(
            DeploymentView, "GET", self._p(project) + f"/online-endpoints/{endpoint}/deployments"
        )

    def endpoint_deployment(
        self, endpoint: str, deployment: str, project: str | None = None
    ) -> DeploymentView:
        return self._one(
            DeploymentView,
            "GET",
            self._p(project) + f"/online-endpoints/{endpoint}/deployments/{deployment}",
        )

    def delete_endpoint_deployment(
        self, endpoint: str, deployment: str, project: str | None = None
    ) -> None:
        self._call(
            "DELETE", self._p(project) + f"/online-endpoints/{endpoint}/deployments/{deployment}"
        )

    def set_endpoint_traffic(
        self, endpoint: str, split: dict[str, int], mirror: bool = False, project: str | None = None
    ) -> EndpointView:
        kind = "mirror-traffic" if mirror else "traffic"
        return self._one(
            EndpointView,
            "PUT",
            self._p(project) + f"/online-endpoints/{endpoint}/{kind}",
            json=split,
        )

    def endpoint_keys(self, name: str, project: str | None = None) -> Keys:
        return self._one(Keys, "GET", self._p(project) + f"/online-endpoints/{name}/keys")

    def regenerate_endpoint_key(self, name: str, key_type: str, project: str | None = None) -> Keys:
        return self._one(
            Keys,
            "POST",
            self._p(project) + f"/online-endpoints/{name}/keys/regenerate",
            json={"key_type": key_type},
        )

    def score_endpoint(
        self,
        name: str,
        body: dict[str, Any],
        deployment: str | None = None,
        project: str | None = None,
    ) -> dict[str, Any]:
        """Call `/endpoints/{name}/score` with the endpoint's primary key."""
        endpoint = self.endpoint(name, project)
        key = self.endpoint_keys(name, project).primary_key
        headers = {"Authorization": f"Bearer {key}"}
        if deployment:
            headers["azureml-model-deployment"] = deployment
        response = httpx.post(endpoint.scoring_uri, json=body, headers=headers, timeout=300)
        raise_for(response)
        return dict(response.json())

    # -- usage -------------------------------------------------------------------------------

    def usage(
        self,
        group_by: str = "target",
        start: str | None = None,
        end: str | None = None,
        project: str | None = None,
    ) -> list[UsageRow]:
        params = {
            k: v
            for k, v in {"group_by": group_by, "start": start, "end": end}.items()
            if v is not None
        }
        return self._many(UsageRow, "GET", self._p(project) + "/usage", params=params)

    # -- monitoring --------------------------------------------------------------------------

    def monitoring(self, window: str = "hour", project: str | None = None) -> list[TargetSummary]:
        """Every target's requests, errors, 429s, tokens and latency over the window."""
        return self._many(
            TargetSummary, "GET", self._p(project) + "/monitoring", params={"window": window}
        )

    def cluster(self) -> list[InstanceView]:
        """Every instance: model, state, memory, slots, uptime (admins only)."""
        return self._many(InstanceView, "GET", "/cluster")

    # -- datasets and fine-tuning jobs -------------------------------------------------------

    def upload_dataset(
        self,
        path: str | Path,
        name: str,
        model: str | None = None,
        project: str | None = None,
    ) -> DatasetView:
        """Upload a chat JSONL file (a new version when the name exists). With `model`, rows
        are also checked against its context length and its tokens counted."""
        path = Path(path)
        data = {"name": name, **({"model": model} if model else {})}
        with path.open("rb") as f:
            files = {"file": (path.name, f, "application/jsonl")}
            return self._one(
                DatasetView, "POST", self._p(project) + "/datasets", data=data, files=files
            )

    def datasets(self, name: str | None = None, project: str | None = None) -> list[DatasetView]:
        params = {"name": name} if name else {}
        return self._many(DatasetView, "GET", self._p(project) + "/datasets", params=params)

    def dataset(self, ref: str, project: str | None = None) -> DatasetView:
        """A dataset by id, NAME:VERSION or NAME (its newest version)."""
        return self._one(DatasetView, "GET", self._p(project) + f"/datasets/{ref}")

    def create_job(
        self,
        model: str,
        training_data: str,
        validation_data: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
        suffix: str | None = None,
        project: str | None = None,
    ) -> JobView:
        """Queue a LoRA fine-tuning job; datasets by NAME, NAME:VERSION or id."""
        body = {
            "model": model,
            "training_data": training_data,
            "validation_data": validation_data,
            "hyperparameters": hyperparameters or {},
            "suffix": suffix,
        }
        return self._one(JobView, "POST", self._p(project) + "/fine-tuning-jobs", json=body)

    def jobs(self, status: str | None = None, project: str | None = None) -> list[JobView]:
        params = {"status": status} if status else {}
        return self._many(JobView, "GET", self._p(project) + "/fine-tuning-jobs", params=params)

    def job(self, job_id: str, project: str | None = None) -> JobView:
        return self._one(JobView, "GET", self._p(project) + f"/fine-tuning-jobs/{job_id}")

    def job_events(
        self, job_id: str, after: int | None = None, limit: int = 1000, project: str | None = None
    ) -> EventList:
        """Up to `limit` events after the event id `after`, with the job's status."""
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return self._one(
            EventList, "GET", self._p(project) + f"/fine-tuning-jobs/{job_id}/events", params=params
        )

    def follow_job(
        self, job_id: str, after: int | None = None, project: str | None = None
    ) -> Iterator[FollowedEvent]:
        """The job's events as they happen (server-sent events), ending with a `JobEnd`
        once the job has finished."""
        params = {"after": after} if after is not None else {}
        path = self._p(project) + f"/fine-tuning-jobs/{job_id}/events"
        try:
            with self._http.stream(
                "GET",
                path,
                params=params,
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(None, connect=10.0),  # a job can be quiet for minutes
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for(response)
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield _FOLLOWED.validate_json(line[6:])
        except httpx.ConnectError as exc:
            raise errors.Unavailable(
                f"Cannot reach lmfoundry at {self.url}; start it with `lmfoundry up`."
            ) from exc
        except httpx.TransportError as exc:
            raise errors.Unavailable(
                f"Lost the connection to lmfoundry while following {job_id} ({exc}); the job "
                f"goes on: `lmfoundry jobs logs {job_id} -f` follows it again."
            ) from exc

    def cancel_job(self, job_id: str, project: str | None = None) -> JobView:
        """Cancel a job; answers once its process has stopped."""
        return self._one(JobView, "POST", self._p(project) + f"/fine-tuning-jobs/{job_id}/cancel")

    def wait_for_job(
        self, job_id: str, timeout: float = 3600.0, project: str | None = None
    ) -> JobView:
        """Follow a job until it completes, fails or is canceled; returns the job."""
        deadline = time.monotonic() + timeout
        for event in self.follow_job(job_id, project=project):
            if isinstance(event, JobEnd):
                break
            if time.monotonic() > deadline:
                raise errors.Timeout(f"Job {job_id} did not finish within {timeout:.0f} s.")
        return self.job(job_id, project=project)


def chat_stream(
    target_url: str, key: str, messages: list[dict[str, str]], timeout: float = 300.0, **params: Any
) -> Iterator[dict[str, Any]]:
    """Stream a chat completion from a deployment's target URL; yields the chunks."""
    body = {"messages": messages, "stream": True, **params}
    with httpx.stream(
        "POST",
        target_url.rstrip("/") + "/chat/completions",
        json=body,
        headers={"api-key": key},
        timeout=timeout,
    ) as response:
        if response.status_code >= 400:
            response.read()
            raise_for(response)
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                return
            chunk = json.loads(data)
            if "error" in chunk:
                raise errors.EngineFailed(chunk["error"].get("message", "stream failed"))
            yield chunk
