"""A real-size DPO rehearsal, no download: the published 5B architecture through the project's trainer.

``model.pretrained: random-full-size`` builds the family's transformer from its published config
(CogVideoX-5B: 42 layers, 48 heads x 64; Wan2.2-TI2V-5B: 30 layers, 24 heads x 128, ffn 14336)
with random weights, partitioned under ZeRO-3 as it is built, in bf16. The trainer runs as users
run it: Ray Train workers, DeepSpeed ZeRO-3, LoRA r=64 / alpha=128 on the paper's attention
targets, gradient checkpointing. On CPU it uses the smallest latent and text the model accepts
(one latent frame of one 2x2 patch, one text token), so it proves shapes, memory, the LoRA target
count and the step mechanics at real size, not speed. ``--paper-size`` uses 49 frames at 480x720
(for a GPU: ``--device cuda``). Last line: one JSON object.

    python -m benchmarks.real_size --family cogvideox-t2v|wan2.2-ti2v [--workers 2] [--steps 2]

``--round`` runs one whole round at real size instead: ``videogpa align`` with ``random-full-size``
weights for every component (transformer, T5-XXL / umT5-XXL, VAE; DA3-Large for scoring) through
the product's own pools and trainer, to a LoRA export: 2 prompts x 2 candidates at the smallest
sampling and GFM sizes the models accept, 2 DPO steps under ZeRO-3 on 2 workers, bf16. A sampler
reads each stage's processes' resident memory (``benchmarks.rehearsal.stage_memory``). Last line:
``{"benchmark": "real_size_round", "family", "round_completed", "run_dir", "whole_pipeline_weights_gib",
"stages": {stage: {"components", "weights_gib", "plan_gib", "peak_rss_mib", "baseline_mib", "model_mib",
"within_plan"}}}``; ``plan_gib`` is ``pipelines.plan.memory_plan``'s total for the stage, ``baseline_mib``
what a fresh Ray actor holds after the imports of that stage's actors (its interpreter and libraries,
no model: ``benchmarks.rehearsal.stage_memory.import_baseline_mib``), ``model_mib`` the peak less it,
and ``within_plan`` whether that is within 20% or 1.5 GiB of the plan.

    python -m benchmarks.real_size --round --family cogvideox-t2v|wan2.2-ti2v [--run-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile

from benchmarks.rehearsal.trainer_runs import train_run, write_random_pairs

# Per-sample latents in the layout each family's encode_video returns, and the prompt embeddings
# (text length x T5-XXL width): the smallest each model accepts, and the paper's 49x480x720.
SHAPES = {
    "cogvideox-t2v": {"smallest": ((1, 16, 2, 2), (1, 4096)), "paper": ((13, 16, 60, 90), (226, 4096))},
    "wan2.2-ti2v": {"smallest": ((48, 1, 2, 2), (1, 4096)), "paper": ((48, 13, 30, 44), (512, 4096))},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(SHAPES), required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--paper-size", action="store_true", help="49 frames at 480x720 (GPU)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--round", action="store_true", help="one whole round of videogpa align at real size")
    parser.add_argument("--run-dir", default="/tmp/videogpa-real-size", help="--round: output_uri (kept)")
    args = parser.parse_args()
    if args.round:
        from benchmarks.real_size_round import run_round_benchmark

        print(json.dumps(run_round_benchmark(args.family, args.run_dir)))
        return

    import ray

    from actors.model_config import RANDOM_FULL_SIZE, ModelConfig

    on_gpu = args.device == "cuda"
    # CPU: one logical CPU per worker plus one for the Ray Data read that feeds them
    ray.init(num_cpus=None if on_gpu else args.workers + 1, include_dashboard=False, log_to_driver=True)
    latent, text = SHAPES[args.family]["paper" if args.paper_size else "smallest"]
    with tempfile.TemporaryDirectory(prefix="videogpa-real-size-") as d:
        files = write_random_pairs(os.path.join(d, "pairs"), 2 * args.workers, latent, text)
        model = ModelConfig(family=args.family, pretrained=RANDOM_FULL_SIZE, dtype="bfloat16")
        m = train_run(model, dict(num_workers=args.workers, use_gpu=on_gpu, zero_stage=3, precision="bf16",
                                  lora_rank=64, lora_alpha=128, learning_rate=1e-4, warmup_steps=0,
                                  max_steps=args.steps, micro_batch_size=1, effective_batch_size=args.workers,
                                  gradient_checkpointing=True, log_every=1, checkpoint_every=args.steps,
                                  max_failures=0), files)
    ray.shutdown()
    history = m["history"]
    memory_key = "peak_memory_mib_per_gpu" if on_gpu else "peak_rss_mib_per_worker"
    print(json.dumps({
        "benchmark": "real_size",
        "family": args.family,
        "transformer_params": m["model_params"],
        "lora_params": m["lora_params"],
        "lora_fraction": round(m["lora_params"] / m["model_params"], 5),
        "lora_tensors": m["lora_tensors"],
        "workers": args.workers,
        "zero_stage": 3,
        "device": args.device,
        "latent_shape": list(latent),
        "text_len": text[0],
        memory_key: round(m["peak_memory_mb"], 1),
        "steps": m["steps"],
        "loss_first": history[0]["loss"],
        "loss_first_minus_ln2": history[0]["loss"] - math.log(2),
        "loss_last": history[-1]["loss"],
        "step_s": round(m["step_s"], 2),
        "lora_nonzero": m["lora_nonzero"],
    }))


if __name__ == "__main__":
    main()
