"""Runs a flex or prompty flow inside the flow process, with the executor's interface
(`load`, `run_line`, `aggregate`), so `process.py` drives it as it drives a DAG.

As Prompt flow's script executor: the entry's module is imported from the flow folder; a
class entry is built once with its init arguments (connection names become connection
objects, model configurations are built from a dict and a named connection's endpoint and
key); each line calls it with the line's inputs (a coroutine is awaited); generators are
joined unless the line is streamed, inside a dict or a dataclass too; the result becomes the
line's outputs (a dict as it is, a dataclass as its fields, anything else as `output`).
`__aggregate__` runs after a batch run over the outputs of the lines that completed (dicts
with attribute access); its dict is the run's metrics, and a failure in it leaves the
metrics empty without failing the run.

This module runs user code: it is imported only in the flow process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from lmfoundry.flows.executor import LineResult, NodeError, describe
from lmfoundry.flows.flex import AGGREGATE, FlexFlow
from lmfoundry.flows.flex_init import MODEL_CONFIGS
from lmfoundry.flows.prompty import PromptyFlow
from lmfoundry.flows.tools import CustomConnection, collecting_metrics, log_metric

OUTPUT = "output"  # Prompt flow's name for a flex flow's one output


class AttrDict(dict[str, Any]):
    """A line's output as `__aggregate__` sees it: a dict whose keys read as attributes."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def _sync(agen: AsyncIterator[Any]) -> Iterator[Any]:
    """An async generator as a plain one, on a loop of its own."""
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(agen.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.close()


def _join(value: Any) -> Any:
    if isinstance(value, AsyncIterator):
        value = _sync(value)
    if isinstance(value, Iterator) and not isinstance(value, str):
        return "".join(str(chunk) for chunk in value)
    return value


def _plain(value: Any) -> Any:
    """Dataclasses inside outputs as dicts, so they travel as JSON."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def as_outputs(value: Any) -> dict[str, Any]:
    """Prompt flow's conversion of what an entry returns to a line's outputs."""
    if isinstance(value, dict):
        return dict(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return {OUTPUT: value}


class FlexExecutor:
    def __init__(
        self,
        dag: FlexFlow,
        connections: dict[str, dict[str, Any]],
        init_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.dag = dag
        self.connections = {
            name: CustomConnection(
                configs=c.get("configs"), secrets=c.get("secrets"), name=c.get("name", name)
            )
            for name, c in connections.items()
        }
        self.init_kwargs = dict(init_kwargs or {})
        self._entry: Any = None  # a function, a built class entry or a Prompty
        self._aggregate: Callable[..., Any] | None = None
        self._is_async = False

    @property
    def name(self) -> str:
        return self.dag.function

    def load(self) -> None:
        """Import the entry (and build a class entry), so a broken module or __init__ fails
        before the first line, naming the entry."""
        from lmfoundry.flows import prompty_run

        prompty_run.use_connections(self.connections)
        try:
            if isinstance(self.dag, PromptyFlow):
                path = self.dag.folder / self.dag.source
                self._entry = prompty_run.Prompty(path, **self.init_kwargs)
                return
            target = self._import()
            call = vars(target).get("__call__") if inspect.isclass(target) else target
            self._is_async = inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)
            if inspect.isclass(target):
                instance = target(**self._init_arguments())
                self._entry = instance
                self._aggregate = getattr(instance, AGGREGATE, None)
            elif callable(target):
                self._entry = target
            else:
                raise TypeError(f"{self.dag.entry} is a {type(target).__name__}, not a function")
        except Exception as exc:  # user code: any failure to load or build is the flow's
            raise NodeError(self.name, exc) from exc

    def _import(self) -> Any:
        module_name = self.dag.entry.split(":")[0].strip()
        path = (self.dag.folder / self.dag.source).resolve()
        module = sys.modules.get(module_name)
        if module is not None and Path(getattr(module, "__file__", "") or "").resolve() != path:
            # the name is taken (a library of the same name): load the file beside it
            spec = importlib.util.spec_from_file_location(f"_flow_{module_name}", path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {self.dag.source}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        elif module is None:
            module = importlib.import_module(module_name)
        return getattr(module, self.dag.function)

    def _init_arguments(self) -> dict[str, Any]:
        values = dict(self.init_kwargs)
        for name, value in self.init_kwargs.items():
            param = self.dag.init.get(name)
            if param is None:
                continue
            if param.kind == "connection":
                values[name] = self.connections[value]
            elif param.kind in MODEL_CONFIGS:
                values[name] = self._model_configuration(param.kind, value)
        return values

    def _model_configuration(self, kind: str, value: dict[str, Any]) -> Any:
        """A model configuration from its JSON; with `connection`, built from that
        connection's endpoint and key (Prompt flow's `from_connection`)."""
        from lmfoundry.flows.prompty_run import (
            AzureOpenAIModelConfiguration,
            OpenAIModelConfiguration,
        )

        if kind == "AzureOpenAIModelConfiguration":
            azure = AzureOpenAIModelConfiguration(**value)
            if not azure.connection:
                return azure
            connection = self.connections[azure.connection]
            return AzureOpenAIModelConfiguration.from_connection(connection, azure.azure_deployment)
        openai = OpenAIModelConfiguration(**value)
        if not openai.connection:
            return openai
        return OpenAIModelConfiguration.from_connection(
            self.connections[openai.connection], openai.model
        )

    # -- one line ----------------------------------------------------------------------------

    def _error(self, exc: BaseException) -> dict[str, Any]:
        """Prompt flow's message for a failed line, with the user's frames: an async entry's
        error as it stands, a plain one's as "Execution failure in 'f': (Type) message" (the
        two paths of its script executor)."""
        error = describe(NodeError(self.name, exc))
        if self._is_async:
            error["message"] = str(exc) or type(exc).__name__
        else:
            where = f"{self.name}.__call__" if self.dag.is_class else self.name
            error["message"] = f"Execution failure in {where!r}: ({type(exc).__name__}) {exc}"
        return error

    def run_line(self, inputs: dict[str, Any], stream: bool = False) -> LineResult:
        if self._entry is None:
            raise RuntimeError("load() first")
        try:
            value = self._entry(**inputs)
            if inspect.isawaitable(value):
                value = asyncio.run(_awaited(value))
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
                value = dataclasses.replace(value, **{k: _join(v) for k, v in fields.items()})
            outputs = as_outputs(value)
            stream_output = None
            for key, item in list(outputs.items()):
                if isinstance(item, AsyncIterator):
                    item = outputs[key] = _sync(item)
                if isinstance(item, Iterator) and not isinstance(item, str):
                    if stream and stream_output is None:
                        stream_output = key
                    else:
                        outputs[key] = _join(item)
            outputs = {k: v if k == stream_output else _plain(v) for k, v in outputs.items()}
        except Exception as exc:  # noqa: BLE001 - user code: any failure fails the line
            return LineResult("failed", error=self._error(exc))
        aggregation: dict[str, dict[str, Any]] = {}
        if self._aggregate is not None and self.dag.aggregate_input:
            whole = isinstance(value, dict) or dataclasses.is_dataclass(value)
            element = outputs if whole else outputs[OUTPUT]
            if stream_output is None:
                aggregation = {AGGREGATE: {self.dag.aggregate_input: _plain(element)}}
        return LineResult("completed", outputs, None, aggregation, stream_output)

    # -- aggregation -------------------------------------------------------------------------

    def aggregate(self, lists: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
        if self._aggregate is None or not self.dag.aggregate_input:
            return {"status": "completed", "metrics": {}, "outputs": {}}
        results = lists.get(AGGREGATE, {}).get(self.dag.aggregate_input, [])
        results = [AttrDict(r) if isinstance(r, dict) else r for r in results]
        with collecting_metrics() as metrics:
            try:
                value = self._aggregate(results)
                if inspect.isawaitable(value):
                    value = asyncio.run(_awaited(value))
                if isinstance(value, dict):
                    for key, metric in value.items():
                        log_metric(key, metric)
                else:
                    print(
                        "The output of __aggregate__ is not a dict, so no metrics are recorded.",
                        file=sys.stderr,
                    )
            except Exception:  # noqa: BLE001 - user code; Prompt flow keeps the run, no metrics
                print("__aggregate__ failed; the run has no metrics:", file=sys.stderr)
                traceback.print_exc(file=sys.stderr)
                return {"status": "completed", "metrics": {}, "outputs": {}}
            return {"status": "completed", "metrics": dict(metrics), "outputs": {}}


async def _awaited(value: Any) -> Any:
    return await value


def executor_for(
    dag: Any, connections: dict[str, dict[str, Any]], init_kwargs: dict[str, Any] | None
) -> Any:
    """The executor for a loaded flow: this one for flex and prompty flows, else the DAG's."""
    if isinstance(dag, FlexFlow):
        return FlexExecutor(dag, connections, init_kwargs)
    from lmfoundry.flows.executor import Executor

    executor = Executor(dag, connections)
    if dag.prompty_connections:  # python nodes load .prompty files that name connections
        from lmfoundry.flows import prompty_run

        prompty_run.use_connections(executor.connections)
    return executor
