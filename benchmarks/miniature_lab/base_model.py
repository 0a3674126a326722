"""Train a miniature base video model for the synthetic world (``benchmarks.miniature_lab.world``).

The model is a real ``CogVideoXPipeline`` (tokenizer, T5 text encoder, ``AutoencoderKLCogVideoX``,
``CogVideoXTransformer3DModel``, ``CogVideoXDPMScheduler``) trained on synthetic clips, a mix of
3D-consistent and corrupted ones (``mix_corrupted``), with one text prompt per camera trajectory
(``MINIATURE_PROMPTS``), so that its samples are sometimes consistent and sometimes not: the
situation VideoGPA is for.

The world is miniature (``render_training_videos``): ``num_clips`` clips of only ``num_scenes``
scenes (default 24 clips of 3 scenes, one per trajectory and so one per prompt, 32x32, 9 frames),
each scene keeping its camera path in all its clips, so its clean and corrupted clips differ only
by the corruption. Half the clips (``mix_corrupted``) are corrupted, by default with the geometric
corruptions only (``GEOMETRIC_CORRUPTIONS``: warp, drift, deform). A model this small, trained for
minutes on a CPU, can learn such a world; ``num_scenes=None`` (a fresh scene per clip) and any
subset of ``benchmarks.miniature_lab.world.CORRUPTIONS`` are still available.

What comes from the tiny preset (``actors.models``) unchanged: the in-memory tokenizer, the T5 text
encoder (random init, frozen) and the scheduler. What is built here instead, with the same
diffusers classes:

* the VAE: 2 blocks (2x spatial, 2x temporal: 9 frames -> 5 latent frames, 8 latent channels, 45k
  params), trained first as an autoencoder (MSE + tiny KL, lr 1e-2); its ``scaling_factor`` is then
  set to ``1 / std(latents)`` (as Stable Diffusion's was chosen), so the diffusion sees unit-variance
  x0. The pipeline reads it back from ``vae.config`` after save/reload.
* the transformer: the preset's layout (RoPE, patch 2, 2 layers) with 8 latent channels in/out and a
  wider attention (``4 x 32``, 0.5M params); trained with full weights by the standard CogVideoX
  v-prediction loss (``actors.families``: ``sample_timesteps`` / ``noisy_and_target`` / ``predict``)
  on latents from ``actors.models.encode_training_inputs``, with 10% empty prompts so
  classifier-free guidance works. Prompt embeddings have the length the saved model is sampled with
  (226 tokens, ``generate_videos`` on a local directory), not the tiny preset's 16.

Why this world (measured with ``generate_videos``, 30 steps, guidance 3, 8 seeds x 3 prompts; MSE on
[0,1] pixels; sharpness and frame change as ``actors.scoring.sharpness`` / ``frame_change``):

* 6 scenes, all four corruptions (the previous default): samples were blurry (sharpness 0.084 vs
  0.172 for the training clips), nearest-clip MSE 0.014, and the prompt chose the right scene in 14
  of 24 samples only. The miniature experiment's Epipolar scores did not improve under DPO.
* 3 scenes, geometric corruptions (default): nearest-clip MSE 0.0051 (0.0032-0.0077), the right
  scene for the prompt in 22 of 24, sharpness 0.131 vs 0.204 for the clips, frame change 0.0176 vs
  0.0232. Within the orbit and pan prompts (6 seeds each) the samples' 3DCS and Epipolar scores
  rise together (the dolly samples are all alike): the seed picks how consistent a sample is,
  which is what preference pairs need.
* 64 px with ``patch_size=4`` (same token count): 16.3 min to train (VAE 480 s), fixed eval loss
  0.181 against 0.089 at 32 px; not pursued.
* Earlier still, samples were grey noise: a 3-block VAE (4x spatial and temporal) did not learn in
  a CPU budget, a 4 x 16 transformer could not fit 48 distinct scenes, and the training text length
  (16) was not the sampling one (226).

Training with the defaults, one thread of a shared 2-core CPU: 10.4 min (VAE 140 s, transformer
3000 steps 486 s); VAE reconstruction MSE 0.0030 against a pixel variance of 0.040; fixed eval loss
of the transformer 1.31 -> 0.089.

The result is saved with ``pipe.save_pretrained(dir)``; ``ModelConfig(family="cogvideox-t2v",
pretrained=dir)`` loads it through ``build_pipeline``'s real-model path (tokenizer included).
Results are cached under ``~/.cache/videogpa/miniature/base-<hash of the settings>/``; a second call
with the same settings returns at once.

CLI: ``python -m benchmarks.miniature_lab.base_model [--out DIR] [--steps N] [--vae-steps N] [--num-scenes N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np
import torch

from actors.errors import InputError
from actors.families.base import video_to_vae_input
from benchmarks.miniature_lab.gfm_training import SPEED_RANGE, torch_threads, warmup_cosine
from benchmarks.miniature_lab.world import CORRUPTIONS, TRAJECTORIES, render_clip

MINIATURE_PROMPTS = {
    "orbit": "the camera orbit around the room",
    "dolly": "the camera dolly in the room",
    "pan": "the camera pan in the room",
}
SUPPORTED_FAMILIES = ("cogvideox-t2v",)
# Flicker is left out by default: it is photometric, not a 3D inconsistency, and the Epipolar score
# cannot see it (it ranked flickering clips above their clean twins 5 times in 12, chance level).
GEOMETRIC_CORRUPTIONS = ("warp", "drift", "deform")
CACHE_VERSION = 2  # 2: miniature world (scene set), 2-block VAE, real-model text length
LATENT_CHANNELS = 8
VAE_TEMPORAL_RATIO = 2  # 2 VAE blocks: 2x spatial, 2x temporal (9 frames -> 5 latent frames)
TRAIN_SEED_OFFSET = 2_000_000  # scenes of the base model's data never coincide with the GFM's

logger = logging.getLogger(__name__)


def default_cache_dir() -> str:
    return os.environ.get("VIDEOGPA_MINIATURE_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "videogpa", "miniature"))


# ----------------------------------------------------------------------------- model


def build_miniature_pipeline(family: str = "cogvideox-t2v", size: int = 32, num_frames: int = 9, patch_size: int = 2):
    """The untrained miniature pipeline (fixed seeds): preset tokenizer/text encoder/scheduler,
    miniature VAE and transformer (see the module docstring). ``patch_size`` 4 at 64 px keeps the
    token count of 32 px with patch 2."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXPipeline, CogVideoXTransformer3DModel

    from actors.families import get_family
    from actors.families.tiny import TINY_MAX_SEQUENCE_LENGTH, seeded, tiny_text_encoder, tiny_tokenizer

    if family not in SUPPORTED_FAMILIES:
        raise InputError(f"family: the miniature base model supports {', '.join(SUPPORTED_FAMILIES)}, got {family!r}")
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(family, vocab_size=len(tokenizer), umt5=False)
    with seeded(f"miniature/{family}/vae"):
        vae = AutoencoderKLCogVideoX(
            in_channels=3,
            out_channels=3,
            down_block_types=("CogVideoXDownBlock3D",) * 2,
            up_block_types=("CogVideoXUpBlock3D",) * 2,
            block_out_channels=(8, 8),
            latent_channels=LATENT_CHANNELS,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=VAE_TEMPORAL_RATIO,
            scaling_factor=1.0,  # set from the trained encoder's latents
        )
    latent = size // 2
    with seeded(f"miniature/{family}/transformer"):
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=4,
            attention_head_dim=32,  # width 128: 4 x 16 could not fit 24 clips (eval loss 0.33 vs 0.19)
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            time_embed_dim=32,
            text_embed_dim=text_encoder.config.d_model,
            num_layers=2,
            patch_size=patch_size,
            temporal_compression_ratio=VAE_TEMPORAL_RATIO,
            max_text_seq_length=TINY_MAX_SEQUENCE_LENGTH,
            use_rotary_positional_embeddings=True,
            sample_height=latent,
            sample_width=latent,
            sample_frames=num_frames,
        )
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
        scheduler=get_family(family).sampling_scheduler(get_family(family).tiny_scheduler())
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_training_videos(
    num_clips: int, size: int, num_frames: int, mix_corrupted: float, seed: int, num_scenes: int | None = None,
    corruptions: tuple[str, ...] = GEOMETRIC_CORRUPTIONS,
) -> tuple[np.ndarray, list[str], list[str | None]]:
    """uint8 ``[N,F,H,W,3]`` clips, their trajectory and corruption (None = consistent).

    Clip ``i`` shows scene ``i % num_scenes`` (None: every clip its own scene). A scene keeps its
    room, camera path and speed in all its clips, so its clean and corrupted clips differ only by the
    corruption: a world small enough for a CPU-trained model to learn, in which "consistent or not"
    is the variation left to the sampler."""
    rng = np.random.default_rng([seed, 7])
    num_scenes = num_scenes or num_clips
    speeds = rng.uniform(*SPEED_RANGE, size=num_scenes)
    videos, trajs, corrs = [], [], []
    for i in range(num_clips):
        scene = i % num_scenes
        traj = TRAJECTORIES[scene % len(TRAJECTORIES)]
        corr = str(rng.choice(corruptions)) if rng.uniform() < mix_corrupted else None
        clip = render_clip(TRAIN_SEED_OFFSET + seed * 10_000 + scene, traj, corr, num_frames, size,
                           float(speeds[scene]))
        videos.append(clip.frames)
        trajs.append(traj)
        corrs.append(corr)
    return np.stack(videos), trajs, corrs


def _to_vae(videos: np.ndarray) -> torch.Tensor:
    """[N,F,H,W,3] uint8 -> [N,3,F,H,W] in [-1,1], the family's VAE input convention."""
    return torch.cat([video_to_vae_input(v, "cpu", torch.float32) for v in videos])


def _optimizer_step(loss: torch.Tensor, module: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler) -> float:
    """Backward, clip the gradient norm to 1, step optimizer and schedule; the loss as a float."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()
    sched.step()
    return loss.item()


def train_vae(vae, videos: np.ndarray, steps: int, seed: int, lr: float = 1e-2, kl_weight: float = 1e-6) -> dict:
    """Autoencoder training of ``vae`` on ``videos`` (batch 1, MSE + ``kl_weight`` KL), then sets
    ``scaling_factor = 1 / std(latents)``. Returns figures (loss start/end, recon MSE)."""
    x_all = _to_vae(videos)
    recon_before = _recon_mse(vae, x_all)
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = warmup_cosine(opt, steps)
    rng = np.random.default_rng([seed, 11])
    losses = []
    for _ in range(steps):
        x = x_all[int(rng.integers(len(x_all)))][None]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mode()).sample
        loss = ((rec - x) ** 2).mean() + kl_weight * post.kl().mean()
        losses.append(_optimizer_step(loss, vae, opt, sched))
        if len(losses) % 250 == 0:
            logger.info("VAE step %d/%d: loss %.4f (last 250 steps)", len(losses), steps, np.mean(losses[-250:]))
    vae.eval().requires_grad_(False)
    recon_after = _recon_mse(vae, x_all)
    with torch.no_grad():
        std = torch.cat([vae.encode(x[None]).latent_dist.mode() for x in x_all[:8]]).std().item()
    vae.register_to_config(scaling_factor=float(1.0 / max(std, 1e-6)))
    return {
        "vae_steps": steps,
        "vae_loss_start": _mean(losses[:10]),
        "vae_loss_end": _mean(losses[-10:]),
        "vae_recon_before": recon_before,
        "vae_recon_mse_01": recon_after,
        "pixel_var_01": round(float(x_all.var().item() / 4), 5),
        "latent_std": round(std, 4),
    }


@torch.no_grad()
def _recon_mse(vae, x_all: torch.Tensor, n: int = 8) -> float:
    """Mean reconstruction MSE (images in [0,1]) of the first ``n`` clips."""
    was_training = vae.training
    vae.eval()
    mses = [((vae.decode(vae.encode(x[None]).latent_dist.mode()).sample.clamp(-1, 1) - x[None]) ** 2).mean().item() / 4
            for x in x_all[:n]]
    vae.train(was_training)
    return round(float(np.mean(mses)), 5)


def _mean(xs: list[float]) -> float | None:
    return round(float(np.mean(xs)), 6) if xs else None


def diffusion_loss(family, transformer, scheduler, latents, embeds, generator) -> torch.Tensor:
    """Standard CogVideoX v-prediction loss of a batch (``actors.families`` math)."""
    t = family.sample_timesteps(scheduler, latents.shape[0], generator, latents.device)
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    noisy, target = family.noisy_and_target(scheduler, latents, noise, t)
    pred = family.predict(transformer, noisy, t, embeds, None)
    return ((pred.float() - target.float()) ** 2).mean()


@torch.no_grad()
def fixed_eval_loss(family, transformer, scheduler, latents, embeds, seed: int = 0, repeats: int = 4) -> float:
    """The diffusion loss on a fixed set of (noise, timestep) draws: comparable before/after training."""
    gen = torch.Generator().manual_seed(seed)
    return float(np.mean([diffusion_loss(family, transformer, scheduler, latents, embeds, gen).item()
                          for _ in range(repeats)]))


def encode_dataset(
    pipe, family: str, videos: np.ndarray, trajs: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents ``[N,F,C,h,w]`` (via ``encode_training_inputs``), their prompt embeddings ``[N,L,D]``
    and the empty prompt's embedding ``[1,L,D]`` (for prompt dropout / CFG)."""
    from actors.model_config import ModelConfig
    from actors.models import encode_training_inputs

    # The saved model is sampled as a local diffusers directory, i.e. with the real models' text length
    # (226 tokens, not the tiny preset's 16): train on embeddings of that same length, or the
    # transformer sees another text sequence at sampling time than in training.
    model = ModelConfig(family=family, pretrained="miniature-directory")
    latents = torch.empty(0)
    embeds = []
    lat_list = [None] * len(videos)
    for traj in sorted(set(trajs)):
        idx = [i for i, t in enumerate(trajs) if t == traj]
        enc = encode_training_inputs(pipe, model, videos[idx], MINIATURE_PROMPTS[traj], None)
        for j, i in enumerate(idx):
            lat_list[i] = enc["latents"][j]
        embeds.append((traj, enc["prompt_embeds"]))
    by_traj = dict(embeds)
    latents = torch.stack(lat_list)
    prompt_embeds = torch.cat([by_traj[t] for t in trajs])
    empty = encode_training_inputs(pipe, model, videos[:1], "", None)["prompt_embeds"]
    return latents, prompt_embeds, empty


def settings_hash(settings: dict) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def base_model_settings(
    family: str = "cogvideox-t2v",
    steps: int = 3000,
    size: int = 32,
    num_frames: int = 9,
    mix_corrupted: float = 0.5,
    seed: int = 0,
    vae_steps: int = 1000,
    num_clips: int = 24,
    num_scenes: int | None = 3,
    batch_size: int = 4,
    lr: float = 1.5e-3,
    corruptions: tuple[str, ...] = GEOMETRIC_CORRUPTIONS,
    patch_size: int = 2,
) -> dict:
    """The checked settings of a miniature base model: what ``_train`` reads and what the cache
    key hashes. The one place they are built, so the cache key and the tests cannot drift apart."""
    if family not in SUPPORTED_FAMILIES:
        raise InputError(f"family: the miniature base model supports {', '.join(SUPPORTED_FAMILIES)}, got {family!r}")
    if (num_frames - 1) % VAE_TEMPORAL_RATIO or size % 8:
        raise InputError(f"num_frames must be 2k+1 and size a multiple of 8, got {num_frames} frames, size {size}")
    if not 0.0 <= mix_corrupted <= 1.0:
        raise InputError(f"mix_corrupted: expected a fraction in [0, 1], got {mix_corrupted}")
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown or not corruptions:
        raise InputError(f"corruptions: expected a non-empty subset of {CORRUPTIONS}, got {tuple(corruptions)!r}")
    if size // 2 % patch_size:
        raise InputError(f"patch_size: must divide the latent size {size // 2}, got {patch_size}")
    return dict(family=family, steps=steps, size=size, num_frames=num_frames, mix_corrupted=mix_corrupted, seed=seed,
                vae_steps=vae_steps, num_clips=num_clips, num_scenes=num_scenes, batch_size=batch_size, lr=lr,
                speed_range=list(SPEED_RANGE), corruptions=list(corruptions), patch_size=patch_size)


def train_tiny_base_model(
    out_dir: str | None = None,
    cache_dir: str | None = None,
    use_cache: bool = True,
    num_threads: int | None = 1,
    train_if_missing: bool = True,
    read_only_dirs: tuple[str, ...] = (),
    **settings: Any,
) -> dict | None:
    """Train (or fetch from the cache) the miniature base model described by ``settings``
    (``base_model_settings`` arguments); returns its figures, with ``path`` = the diffusers
    directory (``out_dir`` if given, else the cache entry) and ``cached``.
    ``read_only_dirs``: caches searched before ``cache_dir`` (e.g. entries committed with the
    project), never written. ``train_if_missing=False``: None instead of training when no cache
    has such an entry."""
    settings = base_model_settings(**settings)
    name = f"base-{settings_hash(settings)}"
    entry = os.path.join(cache_dir or default_cache_dir(), name)
    # miniature.json is written last: an entry without it is incomplete
    found = next((d for d in (*(os.path.join(r, name) for r in read_only_dirs), entry)
                  if os.path.isfile(os.path.join(d, "miniature.json"))), None)
    if use_cache and found:
        with open(os.path.join(found, "miniature.json")) as f:
            figures = json.load(f)
        figures["path"], figures["cached"] = found, True
    elif not train_if_missing:
        return None
    else:
        with torch_threads(num_threads):
            figures = _train(settings, entry if use_cache else (out_dir or entry))
        figures["cached"] = False
    path = figures["path"]
    if out_dir is not None and os.path.abspath(out_dir) != os.path.abspath(path):
        shutil.copytree(path, out_dir, dirs_exist_ok=True)
        figures["path"] = out_dir
    return figures


def _train(settings: dict, target: str, return_pipe: bool = False):
    from actors.families import get_family

    t0 = time.perf_counter()
    family_name, seed = settings["family"], settings["seed"]
    logger.info("training the miniature base model into %s: %d clips, %d VAE steps, %d transformer steps",
                target, settings["num_clips"], settings["vae_steps"], settings["steps"])
    torch.manual_seed(seed)
    videos, trajs, corrs = render_training_videos(
        settings["num_clips"], settings["size"], settings["num_frames"], settings["mix_corrupted"], seed,
        settings["num_scenes"],
        tuple(settings["corruptions"]),
    )
    t_render = time.perf_counter() - t0

    pipe = build_miniature_pipeline(family_name, settings["size"], settings["num_frames"], settings["patch_size"])
    vae_figs = train_vae(pipe.vae, videos, settings["vae_steps"], seed)
    pipe.vae_scaling_factor_image = pipe.vae.config.scaling_factor  # the pipeline caches it at construction
    t_vae = time.perf_counter() - t0 - t_render

    latents, embeds, empty = encode_dataset(pipe, family_name, videos, trajs)
    family = get_family(family_name)
    transformer, scheduler = pipe.transformer, pipe.scheduler
    eval_idx = list(range(min(8, len(latents))))
    loss_before = fixed_eval_loss(family, transformer, scheduler, latents[eval_idx], embeds[eval_idx], seed)
    transformer.train().requires_grad_(True)
    opt = torch.optim.AdamW(transformer.parameters(), lr=settings["lr"], weight_decay=1e-4)
    steps = settings["steps"]
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed + 1)
    rng = np.random.default_rng([seed, 13])
    losses = []
    for _ in range(steps):
        idx = rng.integers(len(latents), size=settings["batch_size"])
        cond = embeds[idx].clone()
        drop = torch.from_numpy(rng.uniform(size=len(idx)) < 0.1)
        cond[drop] = empty[0]
        loss = diffusion_loss(family, transformer, scheduler, latents[idx], cond, gen)
        losses.append(_optimizer_step(loss, transformer, opt, sched))
        if len(losses) % 250 == 0:
            logger.info("transformer step %d/%d: loss %.4f (last 250 steps)", len(losses), steps,
                        np.mean(losses[-250:]))
    transformer.eval().requires_grad_(False)
    loss_after = fixed_eval_loss(family, transformer, scheduler, latents[eval_idx], embeds[eval_idx], seed)
    t_dit = time.perf_counter() - t0 - t_render - t_vae

    os.makedirs(target, exist_ok=True)
    pipe.save_pretrained(target, safe_serialization=True)
    figures = {
        **settings,
        "path": target,
        "prompts": MINIATURE_PROMPTS,
        "clips_corrupted": int(sum(c is not None for c in corrs)),
        "clips_by_corruption": {c: int(sum(x == c for x in corrs)) for c in CORRUPTIONS},
        **vae_figs,
        "latent_shape": list(latents.shape[1:]),
        "loss_start": _mean(losses[:20]),
        "loss_end": _mean(losses[-20:]),
        "loss_curve": [_mean(losses[i : i + 25]) for i in range(0, len(losses), 25)],
        "fixed_eval_loss_before": round(loss_before, 6),
        "fixed_eval_loss_after": round(loss_after, 6),
        "transformer_params": sum(p.numel() for p in transformer.parameters()),
        "vae_params": sum(p.numel() for p in pipe.vae.parameters()),
        "render_s": round(t_render, 1),
        "vae_train_s": round(t_vae, 1),
        "transformer_train_s": round(t_dit, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    }
    with open(os.path.join(target, "miniature.json"), "w") as f:
        json.dump(figures, f, indent=1)
    return (pipe, figures) if return_pipe else figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.miniature_lab.base_model",
                                description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, help="diffusers directory to write (default: the cache entry)")
    p.add_argument("--family", default="cogvideox-t2v")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--num-frames", type=int, default=9)
    p.add_argument("--num-clips", type=int, default=24)
    p.add_argument("--num-scenes", type=int, default=3, help="scenes of the miniature world (0: one per clip)")
    p.add_argument("--mix-corrupted", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corruptions", default=",".join(GEOMETRIC_CORRUPTIONS), help="comma list of the corruptions used")
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        figures = train_tiny_base_model(
            args.out, family=args.family, steps=args.steps, size=args.size, num_frames=args.num_frames,
            mix_corrupted=args.mix_corrupted, seed=args.seed, vae_steps=args.vae_steps, num_clips=args.num_clips,
            num_scenes=args.num_scenes or None,
            use_cache=not args.no_cache, corruptions=tuple(args.corruptions.split(",")), patch_size=args.patch_size,
        )
    except InputError as err:
        print(f"error: {err}")
        return 2
    print(json.dumps({k: v for k, v in figures.items() if k != "loss_curve"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
