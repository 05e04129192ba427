"""Job parameters: the hyperparameters a user sets, and everything a job process needs.

Pure Python (no torch): the server validates requests with it, the job process runs from it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from lmfoundry.errors import InvalidRequest

LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
)


@dataclass(frozen=True)
class Limit:
    """The accepted range of one numeric hyperparameter (inclusive unless `open_low`)."""

    kind: type
    low: float
    high: float
    open_low: bool = False
    nullable: bool = False


LIMITS: dict[str, Limit] = {
    "learning_rate": Limit(float, 0.0, 1.0, open_low=True),
    "num_train_epochs": Limit(float, 0.0, 1000.0, open_low=True),
    "per_device_train_batch_size": Limit(int, 1, 1024),
    "gradient_accumulation_steps": Limit(int, 1, 1024),
    "warmup_steps": Limit(int, 0, 1_000_000),
    "weight_decay": Limit(float, 0.0, 1.0),
    "lora_r": Limit(int, 1, 1024),
    "lora_alpha": Limit(int, 1, 4096),
    "lora_dropout": Limit(float, 0.0, 0.9),
    "max_seq_length": Limit(int, 16, 1_048_576),
    "seed": Limit(int, 0, 2**32 - 1),
    "max_steps": Limit(int, 1, 10_000_000, nullable=True),
    "checkpoint_steps": Limit(int, 1, 10_000_000, nullable=True),  # null: the default
    "eval_steps": Limit(int, 1, 10_000_000, nullable=True),
    "logging_steps": Limit(int, 1, 10_000),
}


@dataclass(frozen=True)
class Hyperparameters:
    """LoRA supervised fine-tuning settings, named as in Azure's chat-completion pipeline.

    `max_steps` overrides `num_train_epochs` when set. `checkpoint_steps` (default: the
    server's LMFOUNDRY_JOB_CHECKPOINT_STEPS) is how often a job saves a checkpoint it can
    resume from; `eval_steps` (default: `checkpoint_steps`) how often it measures the
    validation loss; `logging_steps` how often it reports the training loss.
    """

    learning_rate: float = 2e-4  # LoRA trains few weights: 10x the full fine-tuning default
    lr_scheduler_type: str = "linear"
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None  # default: chosen by architecture
    max_seq_length: int = 1024  # tokens; longer conversations are cut at the end
    seed: int = 42
    max_steps: int | None = None
    checkpoint_steps: int = 50
    eval_steps: int | None = None  # None: checkpoint_steps
    logging_steps: int = 1

    @classmethod
    def from_request(
        cls, raw: dict[str, Any] | None, default_checkpoint_steps: int
    ) -> Hyperparameters:
        """Validate user input; a 400 names the field (`hyperparameters.lora_r`) and the range."""
        raw = dict(raw or {})
        known = {f.name for f in fields(cls)}
        for name in raw:
            if name not in known:
                raise InvalidRequest(
                    f"Unknown hyperparameter {name!r}; the known ones are: "
                    f"{', '.join(sorted(known))}.",
                    param=f"hyperparameters.{name}",
                )
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if name in LIMITS:
                values[name] = _number(name, value, LIMITS[name])
            elif name == "lr_scheduler_type":
                if value not in LR_SCHEDULERS:
                    raise InvalidRequest(
                        f"lr_scheduler_type must be one of {', '.join(LR_SCHEDULERS)} "
                        f"(got {value!r}).",
                        param="hyperparameters.lr_scheduler_type",
                    )
                values[name] = value
            elif name == "lora_target_modules":
                values[name] = _module_names(value)
        checkpoint_steps = values.get("checkpoint_steps") or default_checkpoint_steps
        values["checkpoint_steps"] = checkpoint_steps
        values["eval_steps"] = values.get("eval_steps") or checkpoint_steps
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# One line per hyperparameter: the CLI's option help and the API's field description.
HELP = {
    "learning_rate": "Peak learning rate (default 2e-4).",
    "lr_scheduler_type": f"Learning rate schedule: {', '.join(LR_SCHEDULERS)} (default linear).",
    "num_train_epochs": "Passes over the training data (default 1).",
    "per_device_train_batch_size": "Conversations per batch (default 4).",
    "gradient_accumulation_steps": "Batches per optimizer step (default 1).",
    "warmup_steps": "Steps of linear warm-up from 0 to the learning rate (default 0).",
    "weight_decay": "AdamW weight decay (default 0).",
    "lora_r": "LoRA rank (default 8).",
    "lora_alpha": "LoRA scaling numerator; the update is scaled by alpha / r (default 16).",
    "lora_dropout": "Dropout on the LoRA input (default 0.05).",
    "lora_target_modules": "Layers to adapt (default: by architecture, e.g. Phi-3's qkv_proj, "
    "o_proj, gate_up_proj, down_proj).",
    "max_seq_length": "Tokens per conversation; longer ones are cut at the end (default 1024).",
    "seed": "Random seed for initialisation and data order (default 42).",
    "max_steps": "Stop after this many optimizer steps (overrides num_train_epochs).",
    "checkpoint_steps": "Steps between checkpoints a crashed job resumes from "
    "(default LMFOUNDRY_JOB_CHECKPOINT_STEPS, 50).",
    "eval_steps": "Steps between validation-loss measurements (default checkpoint_steps).",
    "logging_steps": "Steps between training-loss reports (default 1).",
}


def _number(name: str, value: Any, limit: Limit) -> int | float | None:
    param = f"hyperparameters.{name}"
    if value is None and limit.nullable:
        return None
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if limit.kind is int and not is_int:
        raise InvalidRequest(f"{name} must be a whole number (got {value!r}).", param=param)
    if limit.kind is float and not (is_int or isinstance(value, float)):
        raise InvalidRequest(f"{name} must be a number (got {value!r}).", param=param)
    number = float(value)
    too_low = number <= limit.low if limit.open_low else number < limit.low
    if math.isnan(number) or too_low or number > limit.high:
        low = f"greater than {limit.low:g}" if limit.open_low else f"at least {limit.low:g}"
        raise InvalidRequest(
            f"{name} must be {low} and at most {limit.high:g} (got {value!r}).", param=param
        )
    return int(value) if limit.kind is int else float(value)


def _module_names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise InvalidRequest(
            "lora_target_modules must be a non-empty list of module names, e.g. "
            '["q_proj", "v_proj"] (or leave it out to choose by architecture).',
            param="hyperparameters.lora_target_modules",
        )
    return [v.strip() for v in value]


@dataclass(frozen=True)
class Base:
    """The catalog model a job adapts, resolved to its weights when the job was created."""

    id: str
    path: str  # a .gguf file or a Hugging Face folder
    format: str  # "gguf" or "hf"
    architecture: str
    context_length: int
    chat_template: str | None  # None: the template in the weights


@dataclass(frozen=True)
class FineTuneConfig:
    """Everything one job process needs; stored in the job row when the job is created, so a
    resumed job runs exactly what was asked even if the catalog changed since."""

    job_id: str
    base: Base
    training_file: str
    validation_file: str | None
    hyperparameters: Hyperparameters
    work_dir: str  # checkpoints and the job's log
    output_dir: str  # the MLflow model folder, written when training ends
    models_dir: str  # cache of GGUF bases converted to safetensors
    lineage: dict[str, Any] = field(default_factory=dict)

    @property
    def checkpoints_dir(self) -> str:
        return f"{self.work_dir}/checkpoints"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FineTuneConfig:
        return cls(
            **{
                **data,
                "base": Base(**data["base"]),
                "hyperparameters": Hyperparameters(**data["hyperparameters"]),
            }
        )
