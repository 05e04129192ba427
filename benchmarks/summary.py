"""Collect the benchmarks' JSON files into latest.json and a Markdown table (latest.md).

.venv/bin/python benchmarks/summary.py benchmarks/results
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}"


def rows(folder: Path) -> list[tuple[str, str, str]]:
    """(benchmark, what is compared, ratio) for each result file present."""
    out: list[tuple[str, str, str]] = []
    serving = folder / "serving.json"
    if serving.exists():
        data = json.loads(serving.read_text())
        runs = data["results"]
        for baseline in ("llama-server", "llama_cpp.server"):
            pairs = zip(runs.get("lmfoundry", []), runs.get(baseline, []), strict=True)
            for ours, theirs in pairs:
                c = ours["concurrency"]
                out.append(
                    (
                        f"serving vs {baseline}, concurrency {c}",
                        f"tok/s {ours['tokens_per_s']:.0f} vs {theirs['tokens_per_s']:.0f}; "
                        f"TTFT p50 {ours['ttft_p50_ms']:.0f} vs {theirs['ttft_p50_ms']:.0f} ms",
                        f"{ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x tok/s, TTFT "
                        f"{ours['ttft_p50_ms'] - theirs['ttft_p50_ms']:+.0f} ms",
                    )
                )
        for onnx, llamacpp in zip(runs.get("onnx", []), runs.get("lmfoundry", []), strict=True):
            out.append(
                (
                    f"onnx engine, concurrency {onnx['concurrency']}",
                    f"tok/s {onnx['tokens_per_s']:.0f} vs llamacpp engine "
                    f"{llamacpp['tokens_per_s']:.0f}; TTFT p99 {onnx['ttft_p99_ms']:.0f} vs "
                    f"{llamacpp['ttft_p99_ms']:.0f} ms",
                    f"{onnx['tokens_per_s'] / llamacpp['tokens_per_s']:.2f}x tok/s",
                )
            )
    gateway = folder / "gateway_overhead.json"
    if gateway.exists():
        data = json.loads(gateway.read_text())
        r, ratios = data["results"], data["ratios"]
        out.append(
            (
                "gateway overhead",
                f"p50 at concurrency 1: bare ASGI {r['bare']['c1']['p50_ms']:.1f} ms, lmfoundry "
                f"{r['on']['c1']['p50_ms']:.1f} ms (quotas+metering off "
                f"{r['off']['c1']['p50_ms']:.1f} ms)",
                f"+{ratios['added_p50_ms_vs_bare']:.1f} ms",
            )
        )
        out.append(
            (
                "gateway throughput",
                f"req/s at concurrency 16: lmfoundry {r['on']['c16']['requests_per_s']:.0f}, "
                f"bare {r['bare']['c16']['requests_per_s']:.0f}",
                f"{ratios['throughput_on_over_bare_c16']:.2f}x bare",
            )
        )
    instances = folder / "instances.json"
    if instances.exists():
        data = json.loads(instances.read_text())
        p, m, a, c = (data[k] for k in ("prefix_reuse", "memory", "adapters", "cold_start"))
        out += [
            (
                "prefix reuse, TTFT",
                f"{p['shared_prefix_tokens']}-token shared prefix: {p['ttft_reuse_ms']:.0f} ms "
                f"with reuse, {p['ttft_no_reuse_ms']:.0f} ms without",
                f"{p['speedup']:.1f}x faster",
            ),
            (
                "instance memory",
                f"idle {m['idle_mb']} MB; 1/4/16 sequences {m['sequences_1_mb']}/"
                f"{m['sequences_4_mb']}/{m['sequences_16_mb']} MB",
                f"{m['ratio_16_over_idle']:.2f}x idle at 16",
            ),
            (
                "adapters on one base",
                f"base {a['base_mb']} MB; 1 adapter {a['adapters_1_mb']} MB; "
                f"4 adapters {a['adapters_4_mb']} MB",
                f"{a['ratio_4_over_1']:.2f}x (4 vs 1)",
            ),
            (
                "cold start",
                f"first token from zero instances {c['cold_ms']} ms; warm {c['warm_ms']} ms",
                f"{c['cold_ms'] / 1000:.1f} s",
            ),
        ]
    finetune = folder / "finetune_throughput.json"
    if finetune.exists():
        data = json.loads(finetune.read_text())
        med = {
            run: statistics.median(r["tokens_per_second"] for r in results)
            for run, results in data["runs"].items()
        }
        out.append(
            (
                "fine-tuning tokens/s",
                f"{data['steps']} steps: " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()),
                f"{med['lmfoundry'] / med['trl']:.2f}x TRL",
            )
        )
    return out


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results")
    table = rows(folder)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    summary: dict[str, Any] = {"when": stamp, "machine": machine(), "rows": table}
    (folder / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        f"Measured {stamp} on {summary['machine']}.",
        "",
        "| benchmark | measured | ratio |",
        "|---|---|---|",
        *(f"| {a} | {b} | {c} |" for a, b, c in table),
    ]
    (folder / "latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
