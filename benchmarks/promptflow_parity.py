"""Prompt flow parity: Prompt flow's own no-LLM test flows, run by real Prompt flow 1.18.5 and
by lmfoundry, single lines and batch runs; prints the share of cases that agree, by kind of
difference.

    scripts/promptflow-venv        # once: real Prompt flow in .venv-promptflow
    .venv/bin/python benchmarks/promptflow_parity.py --git-dir PATH/TO/promptflow.git
    .venv/bin/python benchmarks/promptflow_parity.py --test-configs DIR [--only NAME] [--json F]

The flows are read from a checkout of microsoft/promptflow (`--git-dir`: its
`src/promptflow/tests/test_configs` is extracted with `git archive` into a temporary folder;
nothing of it is copied into this repository), the folders of `flows` and `wrong_flows`.
Left out, and counted as such: flows that call an LLM or need a connection (llm and
custom_llm nodes, package tools, connection inputs, OpenAI/assistant/LangChain code), C#
flows, and flex flows (no flow.dag.yaml).

The inputs: a flow's own data file when it has one (`samples.json`, `inputs.json`,
`data.jsonl`, `inputs.jsonl`; columns that are not flow inputs dropped), else its inputs'
defaults, with a value made up by type for an input without one (the same for both). A
single case is the first line (with the aggregation nodes over it, as `pf flow test` does);
a batch case is up to five lines with the aggregation over the completed ones, as `pf run`.
Each line may take 20 s in both.
A case agrees when both refuse the flow, or both give each line the same status, every
completed line the same outputs, and the aggregation the same status and metrics. Each runner
runs a copy of the flow folder (Prompt flow a snapshot, lmfoundry its flow process's folder),
so a path into that copy in an output (`__file__`) is compared as "{flow}". Flows whose
outputs are random (`random.choice` in their code) can differ between two runs of Prompt flow
itself; they are counted like every other flow, and the report says how many of the
differences are theirs.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.flows.parity.harness import (  # noqa: E402
    MISSING,
    differences,
    have_promptflow,
    run_lmfoundry_many,
    run_promptflow_flows,
)

TEST_CONFIGS = "src/promptflow/tests/test_configs"
DATA_FILES = ("samples.json", "inputs.json", "data.jsonl", "inputs.jsonl")
BATCH_LINES = 5
CHUNK = 5  # flows per Prompt flow process (its import alone takes seconds)
WORKERS = 2  # Prompt flow processes at a time
FLOW_SECONDS = 60  # what one flow may take in Prompt flow before it counts as no answer
LINE_TIMEOUT = 20  # seconds, the same in both (long_run sleeps 61 s: both stop it)
NEEDS_LLM = re.compile(
    r"promptflow\.connections|import openai|from openai|langchain|assistant|AzureOpenAI|"
    r"promptflow\.tools|promptflow\.core import .*Prompty|ModelConfiguration"
)
MADE_UP = {
    "string": ["hello", "world", "prompt flow", "lmfoundry", "parity"],
    "int": [1, 2, 3, 4, 5],
    "double": [1.5, 2.5, 0.25, 3.0, 4.75],
    "bool": [True, False, True, False, True],
    "list": [[1, 2], ["a"], [], [3], [4, 5, 6]],
    "object": [{"a": 1}, {"b": "x"}, {}, {"c": [1]}, {"d": None}],
}


def extract(git_dir: Path, into: Path) -> Path:
    """`git archive` the test flows out of a promptflow checkout into `into`."""
    archive = subprocess.run(
        ["git", f"--git-dir={git_dir}", "archive", "--format=tar", f"HEAD:{TEST_CONFIGS}"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def skip_reason(folder: Path) -> str | None:
    """Why a folder is not a no-LLM dag flow, or None."""
    dag_file = next(
        (folder / n for n in ("flow.dag.yaml", "flow.dag.yml") if (folder / n).is_file()), None
    )
    if dag_file is None:
        return "no flow.dag.yaml"
    try:
        data = yaml.safe_load(dag_file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return None  # both should refuse it: a case
    if not isinstance(data, dict):
        return None
    if data.get("language") == "csharp":
        return "C# flow"
    variants = [
        v.get("node", {})
        for entry in (data.get("node_variants") or {}).values()
        for v in (entry.get("variants") or {}).values()
        if isinstance(v, dict)
    ]
    for node in [*(data.get("nodes") or []), *variants]:
        if not isinstance(node, dict):
            continue
        source = node.get("source") or {}
        if node.get("type") in ("llm", "custom_llm") or node.get("connection"):
            return "llm node"
        if isinstance(source, dict) and str(source.get("type", "code")).startswith("package"):
            return "package tool"
    for env in (data.get("environment_variables") or {}).values():
        if isinstance(env, str) and env.startswith("${"):
            return "connection in environment_variables"
    for code in folder.rglob("*.py"):
        if NEEDS_LLM.search(code.read_text(encoding="utf-8", errors="replace")):
            return "code that needs an LLM or a connection"
    return None


def inputs_for(folder: Path) -> list[dict[str, Any]]:
    """Up to BATCH_LINES lines of inputs: the flow's data file, else defaults and made-up values."""
    dag_file = next(folder / n for n in ("flow.dag.yaml", "flow.dag.yml") if (folder / n).is_file())
    try:
        declared = (yaml.safe_load(dag_file.read_text(encoding="utf-8")) or {}).get("inputs") or {}
    except (yaml.YAMLError, AttributeError):
        declared = {}
    declared = declared if isinstance(declared, dict) else {}
    for name in DATA_FILES:
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        try:
            if name.endswith(".jsonl"):
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            else:
                loaded = json.loads(text)
                rows = loaded if isinstance(loaded, list) else [loaded]
        except ValueError:
            continue
        rows = [
            {k: v for k, v in row.items() if k in declared}
            for row in rows[:BATCH_LINES]
            if isinstance(row, dict)
        ]
        if rows:
            return rows
    lines = []
    for i in range(3):
        line = {}
        for name, spec in declared.items():
            spec = spec if isinstance(spec, dict) else {}
            if "default" in spec:
                continue
            kind = str(spec.get("type", "string"))
            line[name] = MADE_UP.get(kind, MADE_UP["string"])[i]
        lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--git-dir", type=Path, help="a microsoft/promptflow git directory")
    where.add_argument("--test-configs", type=Path, help="an extracted test_configs folder")
    parser.add_argument("--only", action="append", help="run only these flow folders")
    parser.add_argument("--json", type=Path, help="write every case's result here")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each difference")
    args = parser.parse_args()
    if not have_promptflow():
        sys.exit(MISSING)
    with tempfile.TemporaryDirectory(prefix="pf-test-configs-") as tmp:
        configs = args.test_configs or extract(args.git_dir, Path(tmp))
        report(configs, args)


def _promptflow(
    chunk: list[tuple[Path, dict[str, list[dict[str, Any]]]]], skipped: collections.Counter[str]
) -> list[Any]:
    """Prompt flow's answers for a chunk of flows; flow by flow if the chunk's process fails."""
    flows = [(f, list(r.values())) for f, r in chunk]
    try:
        return run_promptflow_flows(flows, LINE_TIMEOUT, FLOW_SECONDS * len(flows))
    except (RuntimeError, subprocess.TimeoutExpired):
        pass
    answers: list[Any] = []
    for flow in flows:
        try:
            answers.extend(run_promptflow_flows([flow], LINE_TIMEOUT, FLOW_SECONDS * 2))
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            skipped[f"Prompt flow did not answer ({type(exc).__name__})"] += 1
            answers.append(None)
    return answers


def uses_random(folder: Path) -> bool:
    """The flow's code draws at random (`random.choice`, a random failure): two runs of
    Prompt flow itself can differ on it."""
    return any(
        re.search(r"^\s*(import random|from random import)", p.read_text(errors="replace"), re.M)
        for p in folder.rglob("*.py")
    )


def report(configs: Path, args: argparse.Namespace) -> None:
    folders = sorted(
        p for group in ("flows", "wrong_flows") for p in (configs / group).iterdir() if p.is_dir()
    )
    if args.only:
        folders = [f for f in folders if f.name in args.only]
    skipped: collections.Counter[str] = collections.Counter()
    totals = {"single": [0, 0], "batch": [0, 0]}  # [agree, cases]
    kinds: dict[str, collections.Counter[str]] = {
        "single": collections.Counter(),
        "batch": collections.Counter(),
    }
    randomly = {"single": 0, "batch": 0}  # differences in flows whose code draws at random
    cases = []
    started = time.monotonic()
    todo = []
    for folder in folders:
        why = skip_reason(folder)
        if why:
            skipped[why] += 1
            continue
        lines = inputs_for(folder)
        todo.append((folder, {"single": lines[:1], "batch": lines}))
    answers = {}
    chunks = [todo[i : i + CHUNK] for i in range(0, len(todo), CHUNK)]
    with ThreadPoolExecutor(WORKERS) as pool:  # a few flows to each Prompt flow process
        results = pool.map(lambda c: _promptflow(c, skipped), chunks)
        for chunk, pfs in zip(chunks, results, strict=True):
            answers.update({folder: pf for (folder, _), pf in zip(chunk, pfs, strict=True)})
    with ThreadPoolExecutor(WORKERS) as pool:
        lmfs = dict(
            zip(
                [f for f, _ in todo],
                pool.map(
                    lambda item: run_lmfoundry_many(item[0], list(item[1].values()), LINE_TIMEOUT),
                    todo,
                ),
                strict=True,
            )
        )
    for folder, runs in todo:
        pf, lmf = answers.get(folder), lmfs[folder]
        if pf is None:
            continue
        for (mode, given), a, b in zip(runs.items(), pf, lmf, strict=True):
            found = differences(a, b)
            totals[mode][1] += 1
            totals[mode][0] += not found
            for kind, _ in found[:1]:
                kinds[mode][kind] += 1
                randomly[mode] += uses_random(folder)
            name = f"{folder.parent.name}/{folder.name}"
            cases.append({"flow": name, "mode": mode, "inputs": given, "differences": found})
            if found and args.verbose:
                print(f"  {name} [{mode}] {found[0][0]}: {found[0][1][:300]}", flush=True)
    print(
        f"Prompt flow 1.18.5 vs lmfoundry, {len(folders)} folders of flows/ and wrong_flows/ "
        f"({time.monotonic() - started:.0f} s)"
    )
    for mode, (agree, total) in totals.items():
        share = 100 * agree / total if total else 0.0
        print(f"  {mode:6}  {agree} / {total} cases agree ({share:.1f}%)")
        for kind, count in kinds[mode].most_common():
            print(f"          {count:3}  {kind}")
        if randomly[mode]:
            print(f"          ({randomly[mode]} of them in flows whose code uses `random`)")
    print("  left out: " + ", ".join(f"{n} {why}" for why, n in skipped.most_common()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"totals": totals, "skipped": skipped, "cases": cases}, indent=1, default=repr
            )
        )


if __name__ == "__main__":
    main()
