"""Trainer configuration (the ``train`` section of the root config; pipelines composes it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class TrainerConfig(BaseModel):
    """Diffusion-DPO LoRA fine-tuning. Defaults are the SPEC §1 method facts (paper recipe)."""

    model_config = ConfigDict(extra="forbid")

    # --- distribution (Ray Train + DeepSpeed) ---
    num_workers: PositiveInt = 1
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # The memory of one GPU of the trainer's nodes: `videogpa plan` and preflight hold a worker's plan against it.
    gpu_memory_gib: float = Field(80.0, gt=0)
    zero_stage: Literal[1, 2, 3] = 2
    # ZeRO-3: parameters gathered at once at most, how many are fetched ahead, and how close (in
    # parameters) a next use must be for a gathered parameter to stay. Larger values trade memory for
    # fewer, better-overlapped gathers (DeepSpeed's own defaults: 1e9, 5e7, 1e9).
    zero3_max_live_parameters: int = Field(30_000_000, ge=0)
    zero3_prefetch_bucket_size: int = Field(10_000_000, ge=0)
    zero3_max_reuse_distance: int = Field(0, ge=0)
    # "auto": bf16 on GPU (the paper's setting), fp32 on CPU (CPU bf16 matmuls are slow and
    # the CPU path exists for tests / quickstart).
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    gradient_checkpointing: bool = True  # a 5B video transformer needs it at 49 frames
    checkpoint_every: PositiveInt = 500  # optimizer steps; a checkpoint is also written at the end
    max_failures: int = Field(2, ge=-1)  # Ray Train FailureConfig; -1 = retry forever

    # --- LoRA ---
    lora_rank: PositiveInt = 64
    lora_alpha: float = Field(128.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    # Warm start: round 0's policy starts from this LoRA directory instead of from zero (diffusers format,
    # or a PEFT adapter such as an official VideoGPA release; actors.lora_formats), with its own r and
    # alpha; the reference stays the base model. Later rounds start from the previous round's LoRA.
    # A local path that the driver and every trainer worker can read (e.g. a shared volume).
    init_lora: str | None = None

    # --- optimisation ---
    learning_rate: float = Field(5e-6, gt=0)
    weight_decay: float = Field(0.01, ge=0)  # torch AdamW's default, as the official trainer runs it
    # AdamW epsilon. Adam's first updates are ~lr·sign(g): gradients that are ~0 up to rounding
    # (order of reduction differs with the worker count) flip sign unless |g| << eps.
    adam_eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(500, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine decays to learning_rate * min_lr_ratio
    max_steps: PositiveInt = 10_000  # optimizer steps (1,000 is already strong per the paper)
    micro_batch_size: PositiveInt = 1  # pairs per worker per forward (each pair = 2 videos)
    effective_batch_size: PositiveInt = 16  # pairs per optimizer step over all workers
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping

    # --- DPO ---
    # "dpo": Diffusion-DPO on (winner, loser). "sft": the winners' denoising loss only, the
    # supervised baseline; its reward metrics are still reported.
    objective: Literal["dpo", "sft"] = "dpo"
    # Encode and train exactly as the official VideoGPA training scripts (reproduce or continue a released
    # LoRA as it was trained), where they depart from the model's inference: CogVideoX without rotary
    # embeddings and with their latent encoding, Wan2.2-TI2V fed the raw t (docs/FIDELITY.md lists all).
    official_objective: bool = False
    beta: float = Field(1.0, gt=0)  # see trainers.dpo for the convention
    # The preference loss on β·margin (trainers.dpo.preference_loss): "sigmoid" (DPO), "hinge",
    # or "label_smoothed" with label_smoothing = ε, the assumed rate of wrong preference labels.
    loss: Literal["sigmoid", "hinge", "label_smoothed"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    # "base": reference = the base network (adapter disabled). "previous_round": reference =
    # base + the previous round's LoRA, held as a frozen second adapter.
    reference: Literal["base", "previous_round"] = "base"

    # --- data / reproducibility ---
    shuffle: bool = True  # per-epoch local shuffle with a fixed seed (deterministic -> resumable)
    shuffle_buffer_size: PositiveInt = 256
    # Per worker: when its share of the pairs fits, epochs after the first come from memory
    # instead of restarting the Ray Data read at every epoch boundary (0 = always stream).
    data_cache_mb: float = Field(2048.0, ge=0)
    seed: int = 0
    log_every: PositiveInt = 10

    # --- validation and the checkpoints kept ---
    # Share of the pairs held out (chosen by a hash of seed and pair_id, so the split survives
    # resumes and world-size changes; at least one pair when > 0). The official trainer holds out 2%.
    # Validation DPO loss and accuracies are computed at every checkpoint and at the last step.
    validation_fraction: float = Field(0.0, ge=0, lt=1)
    # Checkpoints kept: the latest (for resume) plus, with validation, the best by validation loss.
    keep_checkpoints: PositiveInt = 2
    # Which policy is exported as the round's LoRA: the last step's, or the kept checkpoint with
    # the lowest validation loss (needs validation_fraction > 0).
    export: Literal["final", "best_validation"] = "final"

    @model_validator(mode="after")
    def _options_fit_together(self) -> TrainerConfig:
        if self.loss == "label_smoothed" and self.label_smoothing == 0:
            raise ValueError("trainer.loss=label_smoothed needs trainer.label_smoothing > 0")
        if self.loss != "label_smoothed" and self.label_smoothing > 0:
            raise ValueError(f"trainer.label_smoothing is set but trainer.loss={self.loss} ignores it")
        if self.export == "best_validation" and self.validation_fraction == 0:
            raise ValueError("trainer.export=best_validation needs trainer.validation_fraction > 0")
        return self
