"""`node_variants` and `use_variants`: which version of a node a flow runs.

Prompt flow keeps several versions of a node under the top-level `node_variants` and marks the
node that uses them with `use_variants: true`; a run without a chosen variant runs each such
node as its `default_variant_id`, under the node's own name. So does lmfoundry: the default
variant replaces the node before the flow is validated, so its problems are named like any
node's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def apply_default_variants(
    raw_nodes: list[Any], raw_variants: Any, problem: Callable[[str, str], None]
) -> list[Any]:
    """`raw_nodes` with every `use_variants: true` node replaced by its default variant's
    node (its name kept, and `variant` set to the variant's id)."""
    if raw_variants is None:
        raw_variants = {}
    if not isinstance(raw_variants, dict):
        problem("node_variants", "node_variants must be a mapping of node names to variants")
        raw_variants = {}
    result = []
    for raw in raw_nodes:
        if not isinstance(raw, dict) or not raw.get("use_variants"):
            result.append(raw)
            continue
        name = raw.get("name")
        where = f"node_variants.{name}"
        entry = raw_variants.get(name)
        if entry is None:
            problem(
                f"nodes.{name}.use_variants",
                f"node {name!r} has use_variants: true but node_variants has no {name!r}; add "
                f"node_variants.{name} with default_variant_id and variants",
            )
            result.append(raw)
            continue
        variants = entry.get("variants") if isinstance(entry, dict) else None
        default = entry.get("default_variant_id") if isinstance(entry, dict) else None
        if not isinstance(variants, dict) or not variants:
            problem(f"{where}.variants", f"node_variants.{name} needs variants: {{ID: {{node}}}}")
            result.append(raw)
            continue
        chosen = variants.get(default)
        if not isinstance(chosen, dict) or not isinstance(chosen.get("node"), dict):
            problem(
                f"{where}.default_variant_id",
                f"node_variants.{name}: default_variant_id {default!r} is not one of its "
                f"variants ({', '.join(map(str, variants))}), each {{node: {{...}}}}",
            )
            result.append(raw)
            continue
        node = {**chosen["node"], "name": name}
        node.pop("use_variants", None)
        result.append({**node, "__variant__": str(default)})
    return result
