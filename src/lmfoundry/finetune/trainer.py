"""LoRA supervised fine-tuning on chat data: PEFT adapters trained by TRL's SFTTrainer, with
the loss on the assistant's tokens only, checkpoints a job can resume from, and an MLflow
model at the end. Read top to bottom: it is the whole training run.

Choices that differ from TRL's defaults, and why:
- no gradient checkpointing: TRL turns it on to save GPU memory by recomputing activations;
  for the small models this runs on CPU it only costs time (SmolLM2, LoRA r=8, 4 x 80 tokens:
  a step takes ~35% longer with it on the reference machine).
- bf16 autocast only where the hardware computes in bf16 (a CUDA GPU that supports it, or a
  CPU with AMX tiles, ~10-25% faster than fp32 there); elsewhere fp32, which on a CPU
  without bf16 units is the faster one. TRL turns bf16 on everywhere.
- rows tokenized here (`chat.tokenize_conversation`) because the assistant-only mask cannot
  come from templates without `{% generation %}` markers.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import datasets
import torch
import transformers
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
from trl import SFTConfig, SFTTrainer

from lmfoundry.finetune.base import UnsupportedBase, base_folder, target_modules
from lmfoundry.finetune.chat import tokenize_conversation
from lmfoundry.finetune.config import FineTuneConfig
from lmfoundry.finetune.export import save_mlflow_model


class Reporter(Protocol):
    """Where a training run tells what it is doing (the job process: the database)."""

    def log(self, message: str, level: str = "info") -> None: ...

    def started(self, total_steps: int, resumed_from: int) -> None: ...

    def metrics(self, step: int, values: dict[str, float]) -> None: ...

    def validation(self, step: int, loss: float) -> None: ...


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)


def train(config: FineTuneConfig, report: Reporter) -> TrainResult:
    hp = config.hyperparameters
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    gpu = torch.cuda.is_available()
    bf16 = torch.cuda.is_bf16_supported() if gpu else _cpu_has_bf16_units()

    # 1. The base model's folder (a GGUF base is converted once) and its tokenizer.
    base_dir = base_folder(config.base, Path(config.models_dir), report.log)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.chat_template = config.base.chat_template or tokenizer.chat_template
    if not tokenizer.chat_template:
        raise UnsupportedBase(
            f"{config.base.id} has no chat template; give its catalog card one to train it on "
            "chat data."
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 2. The conversations, as token ids with the assistant tokens marked.
    train_rows = _rows(Path(config.training_file), tokenizer, hp.max_seq_length, report)
    eval_rows = (
        _rows(Path(config.validation_file), tokenizer, hp.max_seq_length, report)
        if config.validation_file
        else None
    )

    # 3. The model with LoRA adapters on the layers its architecture calls for.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        target_modules=hp.lora_target_modules or target_modules(model.config.model_type),
        task_type="CAUSAL_LM",
    )

    # 4. Resume from the newest complete checkpoint, if an earlier attempt left one.
    checkpoint = last_checkpoint(Path(config.checkpoints_dir))
    resumed_from = checkpoint_step(checkpoint) if checkpoint else 0
    args = SFTConfig(
        output_dir=config.checkpoints_dir,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        num_train_epochs=hp.num_train_epochs,
        max_steps=hp.max_steps or -1,
        per_device_train_batch_size=hp.per_device_train_batch_size,
        per_device_eval_batch_size=hp.per_device_train_batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        warmup_steps=hp.warmup_steps,
        weight_decay=hp.weight_decay,
        seed=hp.seed,
        max_length=hp.max_seq_length,
        logging_steps=hp.logging_steps,
        save_strategy="steps",
        save_steps=hp.checkpoint_steps,
        save_total_limit=2,
        eval_strategy="steps" if eval_rows is not None else "no",
        eval_steps=hp.eval_steps or hp.checkpoint_steps,
        eval_on_start=eval_rows is not None and checkpoint is None,
        activation_checkpointing=False,  # (TRL's `gradient_checkpointing` default is on)
        include_num_input_tokens_seen="non_padding",  # kept in checkpoints, unlike TRL's count
        bf16=bf16,  # mixed precision: fp32 weights, bf16 matmuls
        use_cpu=not gpu,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    progress = _Progress(report)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_rows),
        eval_dataset=datasets.Dataset.from_list(eval_rows) if eval_rows is not None else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[progress],
    )
    trainer.remove_callback(PrinterCallback)  # the reporter shows the logs
    report.log(
        f"Training LoRA r={hp.lora_r} on {', '.join(sorted(lora.target_modules or []))} of "
        f"{config.base.id}: {len(train_rows)} training conversations."
    )
    if checkpoint is not None:
        report.log(f"Resuming from the checkpoint at step {resumed_from}.")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    step = trainer.state.global_step

    # 5. The validation loss at the last step, unless the schedule just measured it.
    if eval_rows is not None and progress.last_validation_step != step:
        loss = float(trainer.evaluate()["eval_loss"])
        report.validation(step, loss)
        progress.final["validation_loss"] = loss

    # 6. The adapter, tokenizer and lineage as an MLflow model.
    report.log("Saving the adapter as an MLflow model.")
    output = save_mlflow_model(
        trainer.model,
        tokenizer,
        base_dir,
        Path(config.output_dir),
        {
            **config.lineage,
            "job_id": config.job_id,
            "base_model": config.base.id,
            "hyperparameters": hp.to_dict(),
            "metrics": progress.final,
            "steps": step,
        },
    )
    return TrainResult(output_dir=output, steps=step, metrics=dict(progress.final))


def _cpu_has_bf16_units() -> bool:
    """AMX tiles (Intel Sapphire Rapids and later) multiply bf16 natively."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def _rows(
    path: Path, tokenizer: Any, max_length: int, report: Reporter
) -> list[dict[str, list[int]]]:
    """Tokenized conversations; says how many are cut at `max_length` and which are dropped
    because none of their assistant tokens fit (TRL would drop them without a word)."""
    rows, cut, dropped = [], 0, []
    with path.open("rb") as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            row = tokenize_conversation(tokenizer, json.loads(raw)["messages"])
            if len(row["input_ids"]) > max_length:
                cut += 1
            if not any(row["assistant_masks"][:max_length]):
                dropped.append(line)
                continue
            rows.append(row)
    name = path.name
    if cut:
        report.log(
            f"{cut} conversation(s) of {name} are longer than max_seq_length={max_length} "
            "tokens and are cut at the end.",
            "warning",
        )
    if dropped:
        report.log(
            f"Skipping {len(dropped)} conversation(s) of {name} whose first answer starts "
            f"after max_seq_length={max_length} tokens (lines {dropped[:10]}).",
            "warning",
        )
    if not rows:
        raise UnsupportedBase(
            f"No conversation of {name} has an answer within max_seq_length={max_length} "
            "tokens; raise max_seq_length."
        )
    return rows


def last_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint whose trainer state was written (it is written last)."""
    complete = []
    for candidate in folder.glob("checkpoint-*"):
        try:
            json.loads((candidate / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        complete.append(candidate)
    return max(complete, key=checkpoint_step, default=None)


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


class _Progress(TrainerCallback):
    """Turns the Trainer's logs into reports: the training loss, learning rate and tokens per
    second of each logged step, and each validation loss."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.final: dict[str, float] = {}
        self.last_validation_step: int | None = None
        self._tokens = 0  # non-padding tokens trained on, as of the last report
        self._seconds = 0.0  # time spent in training steps since the last report
        self._step_started = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._tokens = int(state.num_input_tokens_seen)  # restored from a checkpoint
        self.report.started(int(state.max_steps), int(state.global_step))

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._step_started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._seconds += time.perf_counter() - self._step_started

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any
    ) -> None:
        logs = logs or {}
        step = int(state.global_step)
        if "eval_loss" in logs:
            self.last_validation_step = step
            self.final["validation_loss"] = float(logs["eval_loss"])
            self.report.validation(step, float(logs["eval_loss"]))
        elif "loss" in logs:
            tokens = int(state.num_input_tokens_seen)
            new, self._tokens = tokens - self._tokens, tokens
            values = {
                "train_loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "tokens_per_second": round(new / self._seconds, 1) if self._seconds else 0.0,
                "trained_tokens": tokens,
                "epoch": round(float(logs.get("epoch", 0.0)), 4),
                "total_steps": int(state.max_steps),
            }
            if "grad_norm" in logs:
                values["grad_norm"] = float(logs["grad_norm"])
            self._seconds = 0.0
            self.final.update(train_loss=values["train_loss"], trained_tokens=tokens)
            self.report.metrics(step, values)
