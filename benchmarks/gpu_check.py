"""Every stage on one GPU at the recipe's (paper) size with ``random-full-size`` weights: seconds and peak
memory of text encoding, generation, pair encoding and scoring, and the trainer's seconds per step and
memory per GPU. What `videogpa plan` estimates, measured.

The pipeline is built once in host memory (``actors.models.build_pipeline``); each stage moves only the
components its actors load (the family's ``stage_components``) to the device, runs, and moves them back,
so its peak is what that stage's actor holds. Peak: ``torch.cuda.max_memory_allocated`` on a GPU (the
stage's weights + activations; the CUDA context is not in it), the process's largest RSS on CPU.
Text: one prompt (and the negative prompt under CFG). Generation: one call of the pool's batch
(``min(generation_pool.batch_size, candidates_per_prompt)`` seeds) from those embeddings. Encoding and
scoring: each generated video. Training: the product's trainer (Ray Train + DeepSpeed ZeRO-3, one
worker, LoRA r64, gradient checkpointing) on pairs of the encoded latents' shape.

    python -m benchmarks.gpu_check --family cogvideox-t2v|wan2.2-ti2v [--steps N] [--gfm vggt|tiny]
    python -m benchmarks.gpu_check --family cogvideox-t2v --tiny --device cpu     # the smoke: tiny preset

The paper-size GFM is VGGT-1B (its package: randomly initialised, saved to a temporary directory and
loaded as ``scoring.weights``); where the package is missing the score stage says so. Last line: one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

RECIPES = {"cogvideox-t2v": "cogvideox-5b.yaml", "wan2.2-ti2v": "wan2.2-ti2v-5b.yaml"}
GIB = 1024 ** 3
PROMPT = "a red car on a street"


class Peak:
    """The peak memory inside a ``measure`` block (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device, self.gib = device, 0.0

    @contextmanager
    def measure(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            yield
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / GIB
            return
        import psutil

        process, done, peak = psutil.Process(), threading.Event(), [0]

        def poll() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], process.memory_info().rss)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            done.set()
            watcher.join()
            self.gib = max(peak[0], process.memory_info().rss) / GIB


@contextmanager
def on_device(pipe, names, device: torch.device, vae_decoder: bool = True):
    """Only ``names`` of the pipeline on ``device`` while the block runs; ``vae_decoder=False``: the
    VAE without its decoder, as pair encoding's actors hold it (``VideoFamily.vae_decodes``)."""
    from actors.families.base import vae_encoding_modules

    modules = [getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None and n not in ("tokenizer", "vae")]
    if "vae" in names:
        modules += [pipe.vae] if vae_decoder else vae_encoding_modules(pipe.vae)
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def timed(fn, device: torch.device):
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def vggt_weights(directory: str) -> str:
    """VGGT-1B's architecture with random weights, saved where ``scoring.weights`` can load it."""
    from vggt.models.vggt import VGGT

    VGGT().save_pretrained(directory)
    return directory


def run_stages(cfg, model, device: torch.device, gfm: str, work: str) -> tuple[dict, np.ndarray, tuple]:
    from actors.families import get_family
    from actors.gfm import ScoringConfig
    from actors.models import build_pipeline
    from actors.scoring import VideoScorer

    family, sampling = get_family(model.family), cfg.sampling
    stages = family.stage_components()
    pipe = build_pipeline(model, "cpu")
    peak, out = Peak(device), {}
    cfg_on = sampling.guidance_scale > 1
    with on_device(pipe, stages["text"], device), peak.measure():
        (embeds, negative), s = timed(lambda: pipe.encode_prompt(
            PROMPT, negative_prompt=sampling.negative_prompt or None, do_classifier_free_guidance=cfg_on,
            num_videos_per_prompt=1, max_sequence_length=family.text_len(model), device=device), device)
    out["text"] = {"components": list(stages["text"]), "s_per_prompt": round(s, 3), "peak_gib": round(peak.gib, 3)}

    seeds = list(range(min(cfg.generation_pool.batch_size, cfg.pairing.candidates_per_prompt)))
    kwargs = dict(prompt_embeds=embeds.repeat(len(seeds), 1, 1), num_frames=sampling.num_frames,
                  height=sampling.height, width=sampling.width, num_inference_steps=sampling.num_inference_steps,
                  guidance_scale=sampling.guidance_scale, output_type="np",
                  generator=[torch.Generator(device).manual_seed(s) for s in seeds],
                  max_sequence_length=family.text_len(model))
    if cfg_on:
        kwargs["negative_prompt_embeds"] = negative.repeat(len(seeds), 1, 1)
    runner, kwargs = family.generation_call(pipe, kwargs, None, sampling)
    with on_device(pipe, stages["generate"], device), peak.measure():
        result, s = timed(lambda: runner(**kwargs).frames, device)
    videos = (np.clip(np.asarray(result, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    out["generate"] = {"components": list(stages["generate"]), "videos_per_call": len(seeds),
                       "s_per_video": round(s / len(seeds), 3), "peak_gib": round(peak.gib, 3)}

    with on_device(pipe, stages["encode"], device, family.vae_decodes("encode")), peak.measure(), torch.no_grad():
        latents, s = timed(lambda: [family.encode_video(pipe, v) for v in videos], device)
    out["encode"] = {"components": list(stages["encode"]), "s_per_video": round(s / len(videos), 3),
                     "peak_gib": round(peak.gib, 3)}
    text_shape = tuple(embeds.shape[1:])

    scoring = dict(backend=gfm, num_frames=10, lpips_backbone="random", resolution=56 if gfm == "tiny" else 518)
    try:
        if gfm == "vggt":
            scoring["weights"] = vggt_weights(os.path.join(work, "vggt"))
        with peak.measure():
            scorer = VideoScorer(ScoringConfig(**scoring), device)
            _, s = timed(lambda: [scorer.score(v) for v in videos], device)
        out["score"] = {"components": [f"gfm:{gfm}", "lpips:vgg"], "s_per_video": round(s / len(videos), 3),
                        "peak_gib": round(peak.gib, 3)}
    except ImportError as err:
        out["score"] = {"skipped": f"{gfm}: {err}"}
    return out, latents[0][0], text_shape  # the pipeline and the scorer go with this frame: the GPU is free


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(RECIPES), required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the tiny preset at its tiny sampling size (smoke)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the recipe's)")
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--skip-train", action="store_true", help="the stages only (no Ray, no DeepSpeed needed)")
    parser.add_argument("--gfm", choices=["vggt", "tiny"], default=None, help="default: vggt, tiny with --tiny")
    args = parser.parse_args()

    from actors.model_config import RANDOM_FULL_SIZE, ModelConfig
    from actors.models import tiny_sampling
    from pipelines.config import load_config

    started = time.perf_counter()
    device = torch.device(args.device)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / RECIPES[args.family])
    model = ModelConfig(family=args.family, pretrained="tiny" if args.tiny else RANDOM_FULL_SIZE,
                        dtype="float32" if args.tiny else "bfloat16")
    sampling = tiny_sampling(args.family) if args.tiny else cfg.sampling
    if args.steps:
        sampling = sampling.model_copy(update={"num_inference_steps": args.steps})
    cfg = cfg.model_copy(update={"model": model, "sampling": sampling})
    gfm = args.gfm or ("tiny" if args.tiny else "vggt")
    with tempfile.TemporaryDirectory(prefix="videogpa-gpu-check-") as work:
        stages, latent, text_shape = run_stages(cfg, model, device, gfm, work)
        on_gpu = device.type == "cuda"
        if on_gpu:
            torch.cuda.empty_cache()
        if not args.skip_train:
            stages["train"] = train(model, latent, text_shape, on_gpu, args.train_steps, work)
    print(json.dumps({
        "benchmark": "gpu_check", "family": args.family, "model": model.pretrained, "dtype": model.dtype,
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "sampling": {k: getattr(sampling, k) for k in ("num_frames", "height", "width", "num_inference_steps",
                                                       "guidance_scale")},
        "stages": stages, "wall_s": round(time.perf_counter() - started, 1),
    }))


def train(model, latent: torch.Tensor, text_shape: tuple, on_gpu: bool, steps: int, work: str) -> dict:
    """The product's trainer on one worker (a GPU, or a CPU for the smoke) on pairs of these shapes."""
    import ray

    from actors.families import get_family
    from benchmarks.rehearsal.trainer_runs import train_run, write_random_pairs

    ray.init(num_cpus=None if on_gpu else 2, include_dashboard=False, log_to_driver=True)
    files = write_random_pairs(os.path.join(work, "pairs"), 2, tuple(latent.shape), text_shape)
    m = train_run(model, dict(num_workers=1, use_gpu=on_gpu, zero_stage=3, precision="bf16" if on_gpu else "fp32",
                              lora_rank=64, lora_alpha=128, learning_rate=1e-4, warmup_steps=0, max_steps=steps,
                              micro_batch_size=1, effective_batch_size=1, gradient_checkpointing=True, log_every=1,
                              checkpoint_every=steps, max_failures=0), files)
    ray.shutdown()
    return {"components": list(get_family(model.family).stage_components()["train"]),
            "s_per_step": round(m["step_s"], 3),
            "peak_gib_per_gpu" if on_gpu else "peak_rss_gib": round(m["peak_memory_mb"] / 1024, 3),
            "latent_shape": list(latent.shape), "lora_nonzero": m["lora_nonzero"]}


if __name__ == "__main__":
    main()
