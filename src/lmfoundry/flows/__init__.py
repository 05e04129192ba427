"""Flows: flow.dag.yaml loading and validation, the executor, flow processes and runs."""
