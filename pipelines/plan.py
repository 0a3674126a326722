"""`videogpa plan`: what each stage's actors hold on a GPU, and a round's GPU-hours, before any GPU is asked for.

Weights: every component a stage loads (the family's ``stage_components``; scoring: the GFM and LPIPS's
VGG) is built from its config on the meta device, so no weight is read or allocated, and cast by the
rules the actors load it by (``model.dtype``; modules diffusers keeps in float32; Wan's float32 VAE).
Configs come from a local diffusers directory, the published configs in code for the families' hub ids
(``actors.families.published``; ``random-full-size`` too), or the hub's ``config.json`` files (the cache
offline). The tiny preset is built as the actors build it.

Activations (the peak beside the weights, at the configured sampling size), and why:

* generate: the denoising forward is inference, so one transformer block's tensors are live at a time:
  per token ``max(8·D, 2·D + 2·F)`` values (residual, norm, q, k, v with their rotary copies, attention
  output; or residual, norm and the two FFN-wide tensors), D the hidden size and F the FFN width, for
  ``B · c · (N + T)`` tokens: B videos per call (``min(pool batch_size, candidates_per_prompt)``: a call is
  one prompt's seeds), c = 2 where CFG runs as one doubled batch (CogVideoX; Wan runs two passes),
  N latent tokens, T text tokens. Attention is assumed to run in a fused kernel (PyTorch SDPA's flash or
  memory-efficient backend, what CUDA uses for bf16/fp16): no N x N score matrix. After the loop the VAE
  decodes: 4 tensors of the decoder's full-resolution width for the frames one causal chunk touches
  (the latent frames it decodes at once x the temporal factor, + 2 cached), per video at once (Wan
  decodes the batch; CogVideoX one video in 240 x 360 tiles), plus the decoded videos. The two phases
  do not overlap: the larger counts.
* text: the encoder's block as above for ``batch_size`` prompts of T tokens, plus T5's explicit
  attention scores and probabilities (heads x T x T, twice).
* encode: one video at a time: the VAE encoder's full-resolution width, 4 tensors, for the frames of one
  causal chunk, plus the input video. Its weights are the VAE without its decoder, which pair encoding
  never loads (``vae_decodes``).
* score: LPIPS's VGG features of the scored frames (both sides), from a forward on the meta device,
  plus the frames; the GFM's own activations are not estimated (benchmarks/gpu_check.py measures them).
* train (one worker): with gradient checkpointing the input of every block is kept (``L · B · (N + T) · D``)
  plus one block's autograd tensors (``B · (N + T) · (12·D + 2·F)``), B = 2 x micro_batch_size (winner
  and loser in one forward); without it, every block's. Beside them: the frozen weights (divided over
  ``num_workers`` under ZeRO-3, whole under ZeRO-1/2, as README's real-size figures show), ZeRO-3's
  gathered parameters (``zero3_max_live_parameters + zero3_prefetch_bucket_size``), the LoRA with its
  gradient and ZeRO's gradient bucket (sized to the LoRA, ``trainers.deepspeed_config.size_gradient_bucket``),
  and its float32 master copy and Adam moments divided over the workers.

A stage fits when its total is at most what one actor gets of one GPU: ``gpu_memory_gib`` of its pool
(``trainer.gpu_memory_gib`` for training), times ``num_gpus`` where a pool packs several actors per GPU.

GPU-hours per round: generation only (the bulk of a round), videos x seconds per video, from a published
figure (``SECONDS_PER_VIDEO``) scaled to the configured size, steps and model by the transformer's FLOPs
per video (``2·N·P + 4·L·N²·D`` per pass, x2 passes under CFG).
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.errors import InputError
from actors.families import get_family
from actors.model_config import RANDOM_FULL_SIZE
from pipelines.config import VideoGPAConfig

STAGES = ("text", "generate", "score", "encode", "train")
POOLS = {"text": "text_pool", "generate": "generation_pool", "score": "scoring_pool", "encode": "encoding_pool"}
GIB = 1024 ** 3
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Published:
    """A published generation time: seconds per video on one GPU, and the setting it was measured at."""

    seconds: float
    gpu: str
    frames: int
    height: int
    width: int
    steps: int
    source: str


_COGVIDEOX_5B = Published(90, "H100", 49, 480, 720, 50, "THUDM/CogVideo README.md, model table, 'Inference Speed "
                          "(Step = 50, FP/BF16)': CogVideoX-5B and -5B-I2V, Single H100 ~90 seconds")
# Per family: its published single-H100 figure, or None with what its authors publish instead. None is
# estimated from CogVideoX-5B's figure (the same GPU) scaled by FLOPs.
SECONDS_PER_VIDEO: dict[str, tuple[Published | None, str]] = {
    "cogvideox-t2v": (_COGVIDEOX_5B, ""),
    "cogvideox-i2v": (_COGVIDEOX_5B, ""),
    "cogvideox1.5-t2v": (Published(550, "H100", 81, 768, 1360, 50, "THUDM/CogVideo README.md, model table: "
                                   "CogVideoX1.5-5B, Single H100 ~550 seconds (5-second video)"), ""),
    "wan2.2-ti2v": (None, "Wan-Video/Wan2.2 README.md gives H100 times only as an image (assets/comp_effic.png); "
                          "in text: a 5-second 720P video in under 9 minutes on one consumer-grade GPU"),
    "wan2.1-t2v": (None, "Wan-Video/Wan2.1 README.md gives H100 times only as an image; in text: T2V-1.3B makes a "
                         "5-second 480P video on an RTX 4090 in about 4 minutes"),
    "wan2.2-t2v-a14b": (None, "Wan-Video/Wan2.2 README.md gives A14B times only as an image (assets/comp_effic.png)"),
}


# ---- components on the meta device ---------------------------------------------------------------


def _pipeline_classes(pipeline_class: type) -> dict[str, type]:
    """Component name -> class, from the pipeline's constructor annotations."""
    import types
    import typing

    classes = {}
    for name, hint in typing.get_type_hints(pipeline_class.__init__).items():
        options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else (hint,)
        found = [c for c in options if isinstance(c, type) and c is not type(None)]
        if found:
            classes[name] = found[0]
    return classes


def _read_json(path: Path, model) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"model.pretrained: cannot read {path} of {model.pretrained!r} "
                         f"({type(err).__name__})") from None


def _component_configs(model, family, names: set[str]) -> tuple[dict[str, dict], str]:
    """Each component's config and where they came from; only config.json files are read."""
    from actors.families.published import PUBLISHED
    from actors.model_source import looks_local

    hub_id = family.real_model_ids[0] if model.pretrained == RANDOM_FULL_SIZE else model.pretrained
    if model.pretrained == RANDOM_FULL_SIZE or (hub_id in PUBLISHED and model.revision is None):
        return {n: PUBLISHED[hub_id][n] for n in names}, f"{hub_id}: published configs in code"
    if looks_local(model.pretrained):
        root = Path(model.pretrained).expanduser()
        return {n: _read_json(root / n / "config.json", model) for n in names}, f"{model.pretrained}: its configs"
    from huggingface_hub import hf_hub_download

    configs = {}
    for name in names:
        try:
            path = hf_hub_download(model.pretrained, f"{name}/config.json", revision=model.revision)
        except Exception as err:  # noqa: BLE001 - offline, missing or unreachable: one line naming the key
            raise InputError(f"model.pretrained: cannot read {name}/config.json of {model.pretrained!r} "
                             f"({type(err).__name__}; offline it must be in the Hugging Face cache)") from None
        configs[name] = _read_json(Path(path), model)
    return configs, f"{model.pretrained}: hub configs"


def _on_meta(cls: type, config: dict[str, Any]):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=True):
        if hasattr(cls, "from_config"):  # diffusers
            return cls.from_config(config)
        return cls(cls.config_class.from_dict(config))  # transformers


def _components(cfg: VideoGPAConfig, family, names: set[str]) -> tuple[dict[str, Any], str]:
    """The model's components that some stage loads, on the meta device (tiny: built), in their dtype."""
    return _components_of(cfg.model.model_dump_json(), frozenset(names))


@functools.lru_cache(maxsize=8)  # preflight and a plan in one process build them once; they are only read
def _components_of(model_json: str, names: frozenset[str]) -> tuple[dict[str, Any], str]:
    import torch

    from actors.families.base import DTYPES, cast_like_from_pretrained
    from actors.model_config import ModelConfig

    model = ModelConfig.model_validate_json(model_json)
    family = get_family(model.family)
    dtype = DTYPES[model.dtype]
    if model.pretrained == "tiny":
        pipe = family.build_stage_pipeline(model, tuple(names))
        return {n: getattr(pipe, n) for n in names}, "tiny preset (built in code)"
    configs, source = _component_configs(model, family, names)
    classes = _pipeline_classes(family.pipeline_class)
    modules = {}
    for name in names:
        module = _on_meta(classes[name], configs[name])
        if hasattr(module, "from_config"):
            cast_like_from_pretrained(module, torch.float32 if name == "vae" and family.vae_float32 else dtype)
        else:
            module.to(dtype)
        modules[name] = module
    return modules, source


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _convs(module) -> list:
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.Conv2d)]


# ---- the stages ------------------------------------------------------------------------------------


@dataclass
class Stage:
    components: list[str]
    params: int
    weights: float  # bytes
    activations: float  # bytes
    budget_gib: float
    where: str  # the pool (or trainer) and its GPUs, for the table
    note: str = ""

    @property
    def total(self) -> float:
        return self.weights + self.activations

    def as_json(self) -> dict[str, Any]:
        return {"components": self.components, "weights_gib": round(self.weights / GIB, 2),
                "activations_gib": round(self.activations / GIB, 2), "total_gib": round(self.total / GIB, 2),
                "fits": self.total <= self.budget_gib * GIB}


def _budget(pool) -> tuple[float, str]:
    share = pool.num_gpus if 0 < pool.num_gpus < 1 else 1.0
    where = f"{pool.num_gpus:g} GPU of {pool.gpu_memory_gib:g} GiB" if pool.num_gpus else \
        f"CPU pool; planned as one {pool.gpu_memory_gib:g} GiB GPU"
    return pool.gpu_memory_gib * share, where


@dataclass(frozen=True)
class _Shape:
    """The denoiser's sizes at the configured sampling: latent tokens, text tokens, hidden, FFN, layers."""

    tokens: int
    text: int
    hidden: int
    ffn: int
    layers: int


def _shape(cfg: VideoGPAConfig, family, transformer, vae) -> _Shape:
    tc, s = transformer.config, cfg.sampling
    shape = family.sampling_shape(vae.config, tc)
    patch = tc.get("patch_size")
    patch_t = tc.get("patch_size_t") or (patch[0] if isinstance(patch, list | tuple) else 1)
    latent_frames = (s.num_frames - 1) // shape.temporal + 1
    tokens = math.ceil(latent_frames / patch_t) * (s.height // shape.multiple) * (s.width // shape.multiple)
    hidden = tc["num_attention_heads"] * tc["attention_head_dim"]
    return _Shape(tokens, family.text_len(cfg.model), hidden, tc.get("ffn_dim") or 4 * hidden, tc["num_layers"])


def _block_values(hidden: int, ffn: int) -> int:
    """Values per token live in one inference block (see the module docstring)."""
    return max(8 * hidden, 2 * hidden + 2 * ffn)


def _vae_bytes(cfg: VideoGPAConfig, family) -> int:
    return 4 if family.vae_float32 else _BYTES[cfg.model.dtype]


def _vae_chunk(vae, sampling, encoder: bool, tiled: bool, element: int) -> float:
    """Bytes of the VAE's full-resolution working set for one causal chunk of one video (or tile)."""
    coder = vae.encoder if encoder else vae.decoder
    convs = _convs(coder)
    width = convs[0].out_channels if encoder else convs[-1].in_channels
    temporal = int(vae.config.get("scale_factor_temporal") or vae.config.get("temporal_compression_ratio") or 4)
    if encoder:
        frames = getattr(vae, "num_sample_frames_batch_size", temporal) + 2
    else:
        frames = getattr(vae, "num_latent_frames_batch_size", 1) * temporal + 2
    height, width_px = sampling.height, sampling.width
    if tiled:  # the tile size the VAE's config gives (CogVideoX: 240 x 360)
        height, width_px = min(height, vae.tile_sample_min_height), min(width_px, vae.tile_sample_min_width)
    patch = vae.config.get("patch_size") or 1
    return 4 * frames * height * width_px / patch ** 2 * width * element


def _video_bytes(sampling, element: int) -> float:
    return 3 * sampling.num_frames * sampling.height * sampling.width * element


def _generate(cfg: VideoGPAConfig, family, modules: dict, shape: _Shape) -> Stage:
    names = list(family.stage_components()["generate"])
    experts = [modules[n] for n in family.experts]
    offload = cfg.sampling.offload_idle_expert and len(experts) > 1
    resident = max(map(_bytes, experts)) if offload else sum(map(_bytes, experts))
    others = [modules[n] for n in names if n not in family.experts]
    weights = resident + sum(map(_bytes, others))
    batch = min(cfg.generation_pool.batch_size, cfg.pairing.candidates_per_prompt)
    cfg_batch = 2 if family.cfg_in_one_batch and cfg.sampling.guidance_scale > 1 else 1
    element = _BYTES[cfg.model.dtype]
    denoise = batch * cfg_batch * (shape.tokens + shape.text) * _block_values(shape.hidden, shape.ffn) * element
    vae = modules["vae"]
    vae_element = _vae_bytes(cfg, family)
    decode = (1 if family.vae_tiled else batch) * _vae_chunk(vae, cfg.sampling, False, family.vae_tiled, vae_element) \
        + batch * _video_bytes(cfg.sampling, vae_element)
    budget, where = _budget(cfg.generation_pool)
    note = f"{family.experts[1]} waits in host memory while {family.experts[0]} denoises, and the other way " \
           "round (sampling.offload_idle_expert)" if offload else ""
    return Stage(names, sum(map(_params, experts + others)), weights, max(denoise, decode), budget, where, note)


def _text(cfg: VideoGPAConfig, family, modules: dict) -> Stage:
    names = list(family.stage_components()["text"])
    encoder = modules["text_encoder"]
    c, length = encoder.config, family.text_len(cfg.model)
    element = _BYTES[cfg.model.dtype]
    per_prompt = length * _block_values(c.d_model, c.d_ff) + 2 * c.num_heads * length * length
    budget, where = _budget(cfg.text_pool)
    return Stage(names, _params(encoder), _bytes(encoder), cfg.text_pool.batch_size * per_prompt * element,
                 budget, where)


def _encode(cfg: VideoGPAConfig, family, modules: dict) -> Stage:
    from actors.families.base import vae_encoding_modules

    names = list(family.stage_components()["encode"])
    vae = modules["vae"]
    element = _vae_bytes(cfg, family)
    activations = _vae_chunk(vae, cfg.sampling, True, family.vae_tiled, element) + _video_bytes(cfg.sampling, element)
    budget, where = _budget(cfg.encoding_pool)
    decodes = family.vae_decodes("encode")
    held = [vae] if decodes else vae_encoding_modules(vae)
    return Stage(names, sum(map(_params, held)), sum(map(_bytes, held)), activations, budget, where,
                 "" if decodes else "the VAE without its decoder (encoding never decodes)")


def _lora_params(module, targets: tuple[str, ...], rank: int) -> int:
    import torch

    return sum(rank * (m.in_features + m.out_features) for name, m in module.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name.endswith(t) for t in targets))


def _train(cfg: VideoGPAConfig, family, modules: dict, shape: _Shape) -> Stage:
    t = cfg.trainer
    names = list(family.stage_components()["train"])
    experts = [modules[n] for n in family.experts]
    bf16 = t.precision == "bf16" or (t.precision == "auto" and t.use_gpu)
    element = 2 if bf16 else _BYTES[cfg.model.dtype] if t.precision == "auto" else 4
    params = sum(map(_params, experts))
    workers = t.num_workers
    frozen = params * element / (workers if t.zero_stage == 3 else 1)
    gathered = (t.zero3_max_live_parameters + t.zero3_prefetch_bucket_size) * element if t.zero_stage == 3 else 0
    lora = sum(_lora_params(e, family.lora_target_modules, t.lora_rank) for e in experts)
    # weight, gradient and ZeRO's contiguous gradient bucket (the LoRA's size: size_gradient_bucket);
    # its float32 master copy and Adam m, v divided over the workers
    lora_bytes = lora * 3 * element + lora * 12 / workers
    batch = 2 * t.micro_batch_size
    sequence = batch * (shape.tokens + shape.text)
    block = sequence * (12 * shape.hidden + 2 * shape.ffn) * element
    kept = shape.layers * sequence * shape.hidden * element if t.gradient_checkpointing else shape.layers * block
    where = f"{workers} worker(s), 1 GPU of {t.gpu_memory_gib:g} GiB each" if t.use_gpu else \
        f"{workers} CPU worker(s); planned as {t.gpu_memory_gib:g} GiB GPUs"
    note = f"ZeRO-3: frozen weights over {workers} workers" if t.zero_stage == 3 else \
        f"ZeRO-{t.zero_stage}: every worker holds the whole frozen model"
    return Stage(names, params, frozen + gathered + lora_bytes, kept + block, t.gpu_memory_gib, where, note)


def _gfm(scoring) -> tuple[Any | None, str]:
    """The GFM's network on the meta device (tiny: built), or None and why not."""
    if scoring.backend == "oracle":
        return None, "oracle: ground truth, no network"
    if scoring.backend == "tiny":
        from actors.gfm import TinyGFM

        return TinyGFM(), ""
    if scoring.backend == "vggt":
        try:
            import torch
            from vggt.models.vggt import VGGT

            with torch.device("meta"):
                return VGGT(), ""
        except ImportError:
            return None, "vggt is not installed here: not counted"
    if scoring.backend == "da3":
        try:
            from accelerate import init_empty_weights
            from depth_anything_3.api import DepthAnything3
        except ImportError:
            return None, "depth_anything_3 is not installed here: not counted"
        with init_empty_weights():  # its constructor computes on tensors: only the parameters go to meta
            return DepthAnything3(model_name="da3-large"), "counted as DA3-Large (the official evaluation GFM)"
    return None, f"{scoring.backend}: its network is not introspected here: not counted"


def _score(cfg: VideoGPAConfig) -> Stage:
    import lpips
    import torch

    scoring = cfg.scoring
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's notice that lpips passes `pretrained`
        net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
    gfm, note = _gfm(scoring)
    side = scoring.resolution or {"vggt": 518, "da3": 504, "tiny": 56}.get(scoring.backend, cfg.sampling.height)
    frames = torch.empty(2 * scoring.num_frames, 3, side, side, device="meta")
    outputs = []
    with torch.no_grad():
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in net.net.modules()
                 if not list(m.children())]
        net.net(frames)
        for hook in hooks:
            hook.remove()
    sizes = [o.numel() * 4 for o in outputs]
    kept = sum(o.numel() * 4 for o in net.net(frames))  # the five tapped feature maps, kept for the distance
    activations = kept + 2 * max(sizes) + frames.numel() * 4
    modules = [net] + ([gfm] if gfm is not None else [])
    budget, where = _budget(cfg.scoring_pool)
    names = [f"gfm:{scoring.backend}", "lpips:vgg"]
    return Stage(names, sum(map(_params, modules)), sum(map(_bytes, modules)), activations, budget, where, note)


# ---- GPU-hours -------------------------------------------------------------------------------------


def _flops_per_video(params: int, shape: _Shape, steps: int, cfg_passes: int) -> float:
    n = shape.tokens + shape.text
    return steps * cfg_passes * (2 * n * params + 4 * shape.layers * n * n * shape.hidden)


def _at_size(cfg: VideoGPAConfig, published: Published) -> VideoGPAConfig:
    """``cfg`` sampling at the size a published figure was measured at."""
    size = dict(num_frames=published.frames, height=published.height, width=published.width)
    return cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update=size)})


def _prompt_count(cfg: VideoGPAConfig) -> tuple[int | None, str]:
    """Prompts in a round, where the driver can tell without storage, and how it told."""
    from pipelines.prompts import BUILTIN_PROMPTS

    path, limit = cfg.prompts.path, cfg.prompts.limit
    if path is None:
        count, how = len(BUILTIN_PROMPTS), "the built-in prompts"
    elif "://" not in path and Path(path).is_file():
        count, how = sum(1 for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()), path
    else:
        return limit, "prompts.limit" if limit else "prompts on storage: set prompts.limit to count them"
    return (min(count, limit), f"{how}, prompts.limit") if limit else (count, how)


def _seconds_per_video(cfg: VideoGPAConfig, family, modules: dict, shape: _Shape) -> tuple[float, str]:
    published, why_not = SECONDS_PER_VIDEO[cfg.model.family]
    passes = 2 if cfg.sampling.guidance_scale > 1 else 1
    params = max(_params(modules[n]) for n in family.experts)  # one expert denoises each step
    ours = _flops_per_video(params, shape, cfg.sampling.num_inference_steps, passes)
    if published is not None:
        ref_shape = _shape(_at_size(cfg, published), family, modules[family.experts[0]], modules["vae"])
        reference = _flops_per_video(params, ref_shape, published.steps, 2)
        return published.seconds * ours / reference, f"{published.source}, scaled by FLOPs to this size and steps"
    from actors.families.cogvideox import COGVIDEOX_T2V
    from actors.families.published import PUBLISHED

    cog = {n: _on_meta(cls, PUBLISHED["THUDM/CogVideoX-5b"][n]) for n, cls in
           _pipeline_classes(COGVIDEOX_T2V.pipeline_class).items() if n in ("transformer", "vae")}
    p = _COGVIDEOX_5B
    cog_cfg = _at_size(cfg, p)
    cog_cfg = cog_cfg.model_copy(update={"model": cfg.model.model_copy(update={"family": "cogvideox-t2v"})})
    reference = _flops_per_video(_params(cog["transformer"]), _shape(cog_cfg, COGVIDEOX_T2V, cog["transformer"],
                                                                     cog["vae"]), p.steps, 2)
    return p.seconds * ours / reference, f"estimated from CogVideoX-5B's H100 ~{p.seconds:g} s by FLOPs; no " \
                                         f"published H100 figure for this family: {why_not}"


# ---- the plan --------------------------------------------------------------------------------------


def _plan(cfg: VideoGPAConfig):
    family = get_family(cfg.model.family)
    wanted = family.stage_components()
    names = {n for stage in wanted.values() for n in stage if n != "tokenizer"}
    modules, source = _components(cfg, family, names)
    shape = _shape(cfg, family, modules[family.experts[0]], modules["vae"])
    stages = {"text": _text(cfg, family, modules), "generate": _generate(cfg, family, modules, shape),
              "score": _score(cfg), "encode": _encode(cfg, family, modules),
              "train": _train(cfg, family, modules, shape)}
    return family, modules, source, shape, stages


def plan_stages(cfg: VideoGPAConfig) -> dict[str, Stage]:
    """Each stage's plan (what preflight holds against the pools' GPUs)."""
    return _plan(cfg)[-1]


def plan_report(cfg: VideoGPAConfig) -> tuple[dict[str, Any], str]:
    """The plan as the issue's JSON (``memory_plan``) and as a human-readable table."""
    family, modules, source, shape, stages = _plan(cfg)
    seconds, basis = _seconds_per_video(cfg, family, modules, shape)
    prompts, how = _prompt_count(cfg)
    hours = None if prompts is None else round(prompts * cfg.pairing.candidates_per_prompt * seconds / 3600, 2)
    memory = min([getattr(cfg, pool).gpu_memory_gib for pool in POOLS.values()] + [cfg.trainer.gpu_memory_gib])
    result = {"stages": {n: stages[n].as_json() for n in STAGES}, "gpu_memory_gib": memory,
              "gpu_hours_per_round": hours}
    return result, _table(cfg, stages, source, shape, seconds, basis, (prompts, how), hours)


def memory_plan(cfg: VideoGPAConfig) -> dict[str, Any]:
    """Per stage: the components its actors load, weights, activation estimate and total (GiB) and whether
    it fits its GPU; the smallest GPU memory configured; generation GPU-hours per round (None where the
    prompt count needs storage: set prompts.limit)."""
    return plan_report(cfg)[0]


def _table(cfg, stages: dict[str, Stage], source: str, shape: _Shape, seconds: float, basis: str,
           prompts: tuple[int | None, str], hours: float | None) -> str:
    s = cfg.sampling
    lines = [f"videogpa plan: {cfg.model.family} ({source}), {cfg.model.dtype}, {s.num_frames} frames at "
             f"{s.height}x{s.width}, {s.num_inference_steps} steps, {shape.tokens} latent tokens + {shape.text} text",
             f"{'stage':<9}{'components':<38}{'params':>8}{'weights':>9}{'activ.':>8}{'total':>8}{'budget':>8}  fits",
             ]
    for name in STAGES:
        st = stages[name]
        lines.append(f"{name:<9}{', '.join(st.components):<38}{st.params / 1e9:>7.2f}B{st.weights / GIB:>9.2f}"
                     f"{st.activations / GIB:>8.2f}{st.total / GIB:>8.2f}{st.budget_gib:>8.1f}  "
                     f"{'yes' if st.as_json()['fits'] else 'NO'}   ({st.where})")
    lines.append("(GiB; budget: what one actor or worker gets of one GPU)")
    lines += [f"{name}: {st.note}" for name, st in stages.items() if st.note]
    count = f"{prompts[0]} prompts ({prompts[1]})" if prompts[0] is not None else prompts[1]
    lines.append(f"generation: {seconds:.0f} s per video on one H100 ({basis})")
    lines.append(f"GPU-hours per round (generation): {hours if hours is not None else 'unknown'} "
                 f"({count}; {cfg.pairing.candidates_per_prompt} candidates each)")
    return "\n".join(lines)
