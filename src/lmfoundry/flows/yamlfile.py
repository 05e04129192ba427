"""Reading a flow's YAML: PyYAML's safe loader without anchors or aliases.

Used on uploads (in the server) and in the flow process; nothing here runs a flow's code.
"""

from __future__ import annotations

from typing import Any

import yaml

from lmfoundry.errors import InvalidRequest


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing anchors and aliases as the document is composed: an
    alias makes a small file a huge tree to walk (600 bytes of nested aliases are
    gigabytes), and a flow never needs one."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            kind = "alias *" if isinstance(event, yaml.AliasEvent) else "anchor &"
            raise InvalidRequest(
                f"{self.name} line {event.start_mark.line + 1}: YAML {kind}{event.anchor} is "
                "not accepted (anchors and aliases are refused in flows); write the repeated "
                "value out in full.",
                param="flow",
            )
        return super().compose_node(parent, index)  # type: ignore[no-any-return]


def _loader(text: str, name: str) -> _NoAliasLoader:
    loader = _NoAliasLoader(text)
    loader.name = name
    return loader


def load_yaml(text: str, name: str = "flow.dag.yaml") -> Any:
    """`yaml.safe_load` without anchors or aliases (400 naming the line). YAMLError for
    text that is not YAML; 400 for nesting too deep to read."""
    loader = _loader(text, name)
    try:
        return loader.get_single_data()
    except RecursionError as exc:
        raise _too_deep(name) from exc
    finally:
        loader.dispose()


def compose_yaml(text: str, name: str = "flow.dag.yaml") -> yaml.Node | None:
    """`yaml.compose` (the tree with line marks) without anchors or aliases."""
    loader = _loader(text, name)
    try:
        return loader.get_single_node()
    except RecursionError as exc:
        raise _too_deep(name) from exc
    finally:
        loader.dispose()


def _too_deep(name: str) -> InvalidRequest:
    return InvalidRequest(
        f"{name} is nested too deeply to read; a flow's YAML is a few levels deep.",
        param="flow",
    )
