"""`lmfoundry flow export DIR --to agent-framework OUT`: a flow as a Microsoft Agent Framework
program (flows/export.py). It runs here, on the folder; no server is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lmfoundry.cli._output import JsonOpt, console, print_json
from lmfoundry.flows.export import TARGETS, export_flow


def export(
    folder: Annotated[Path, typer.Argument(help="The flow folder (with flow.dag.yaml).")],
    out: Annotated[Path, typer.Argument(help="A new (or empty) folder to write the program to.")],
    to: Annotated[
        str, typer.Option("--to", help=f"What to export to: {', '.join(TARGETS)}.")
    ] = "agent-framework",
    json_: JsonOpt = False,
) -> None:
    """Export a flow to a Microsoft Agent Framework program (main.py beside the flow's code)."""
    written = export_flow(folder, to, out)
    if json_:
        print_json({"out": str(out), "files": written})
        return
    console.print(
        f"Wrote {len(written)} files to {out}. Run it with:\n"
        f"  pip install -r {out / 'requirements.txt'}\n"
        f"  python {out / 'main.py'} NAME=VALUE ...   (or --data lines.jsonl)",
        highlight=False,
    )
