"""The LoRA directory formats videogpa reads, and their conversion to the one it loads: diffusers format.

* ``diffusers``: ``pytorch_lora_weights.safetensors`` (+ ``pytorch_lora_weights_transformer_2.safetensors``
  for a second expert), keys ``transformer.<module>.lora_A.weight``, the LoRA config (r, alpha, targets)
  in the file's metadata. What videogpa exports and ``pipe.load_lora_weights(dir)`` reads.
* ``peft``: a PEFT ``save_pretrained`` of the transformer, as the official VideoGPA code trains and
  releases its LoRAs: ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_A.weight``
  and ``adapter_config.json`` (r, lora_alpha, target_modules), modules named as in diffusers.
* ``peft-wan``: the same for a Wan model trained on the original Wan code (the official Wan2.2-TI2V
  LoRA): modules named ``blocks.N.self_attn.q`` … ``blocks.N.cross_attn.o``. diffusers' own converter
  of original Wan LoRAs (``WanPipeline.lora_state_dict``) renames them to ``blocks.N.attn1.to_q`` ….

Two official releases (``VideoGPA-Wan2.2TI2V-lora``, ``VideoGPA-I2V-1K-lora``) ship the PEFT weights
without ``adapter_config.json`` (``download_ckpt.py`` fetches only the weights). Such a directory is read
with the config the official training sets (``train/*/03_train.py``: r 64, lora_alpha 128 on the attention
projections): r from the tensors' shapes, lora_alpha = 2 r (128 at r 64), the modules the file holds,
and one log line saying so.

A converted LoRA keeps its r and lora_alpha in the diffusers metadata, so its strength at a given
``set_adapters`` weight is the same as the PEFT adapter's (weight × lora_alpha / r).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from actors.errors import InputError
from actors.families.base import LORA_WEIGHT_NAME, lora_weight_name
from actors.model_config import ModelConfig

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
# A module of the original Wan code: the q/k/v/o projections of blocks.N.self_attn / cross_attn.
_WAN_ORIGINAL = re.compile(r"(^|\.)blocks\.\d+\.(self_attn|cross_attn)\.")
_BLOCK_INDEX = re.compile(r"^.*?\.\d+\.")
# Up to a block's attention module (attn1., attn2.): what is left is the official target name (to_q, to_out.0).
_ATTENTION_PREFIX = re.compile(r"^(.*\.)?attn\d\.")
MODEL_CARD = "README.md"
# What the LoRA's strength depends on; the rest of a LoraConfig (paths, task, peft version) is not copied,
# so the converted file loads with any peft that diffusers accepts.
_CONFIG_KEYS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "lora_bias")

# The official training's lora_alpha / r (train/*/03_train.py: lora_rank 64, lora_alpha 128).
OFFICIAL_ALPHA_PER_RANK = 2.0

LoraFormat = Literal["diffusers", "peft", "peft-wan"]

logger = logging.getLogger(__name__)


def lora_format(lora_dir: str, name: str | None = None) -> LoraFormat:
    """Which format ``lora_dir`` holds, or one InputError naming it (as ``name``: where it came from,
    when that is not the local path) and what is wrong."""
    name = name or lora_dir
    path = Path(lora_dir)
    if not path.is_dir():
        raise InputError(f"LoRA {name}: not a directory")
    if (path / LORA_WEIGHT_NAME).is_file():
        if not any(".lora_" in k for k in _safetensors_keys(path / LORA_WEIGHT_NAME, name)):
            raise InputError(f"LoRA {name}: {LORA_WEIGHT_NAME} holds no LoRA weights (keys <module>.lora_A/B.weight)")
        return "diffusers"
    if (path / PEFT_WEIGHTS).is_file():
        keys = _safetensors_keys(path / PEFT_WEIGHTS, name)
        return "peft-wan" if any(_WAN_ORIGINAL.search(k) for k in keys) else "peft"
    if (path / "adapter_model.bin").is_file():
        raise InputError(f"LoRA {name}: pickled PEFT weights (adapter_model.bin) are not read; save the adapter "
                         f"with safe_serialization=True ({PEFT_WEIGHTS})")
    raise InputError(f"LoRA {name}: neither a diffusers LoRA ({LORA_WEIGHT_NAME}) nor a PEFT adapter "
                     f"({PEFT_WEIGHTS}, with or without {PEFT_CONFIG})")


def check_lora(model: ModelConfig, lora_dir: str, name: str | None = None) -> LoraFormat:
    """The format of a LoRA directory that ``model`` can load, or one InputError naming it."""
    from actors.families import get_family

    fmt = lora_format(lora_dir, name)
    experts = get_family(model.family).experts
    if fmt != "diffusers" and len(experts) > 1:
        raise InputError(f"LoRA {name or lora_dir}: a PEFT adapter holds one transformer's LoRA; {model.family} has "
                         f"{len(experts)} experts and needs a diffusers LoRA with one file per expert")
    for expert in experts if fmt == "diffusers" else ():
        if not (Path(lora_dir) / lora_weight_name(expert)).is_file():
            raise InputError(f"LoRA {name or lora_dir}: has no {lora_weight_name(expert)}, the LoRA of "
                             f"{model.family}'s {expert}")
    return fmt


def lora_files(lora_dir: str, name: str | None = None) -> list[str]:
    """The files of ``lora_dir`` that make up its LoRA (weights and config; not a model card)."""
    fmt = lora_format(lora_dir, name)
    if fmt == "diffusers":
        return sorted(f.name for f in Path(lora_dir).glob("pytorch_lora_weights*.safetensors"))
    return [f for f in (PEFT_WEIGHTS, PEFT_CONFIG) if (Path(lora_dir) / f).is_file()]


def _safetensors_keys(file: Path, name: str) -> list[str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except (OSError, SafetensorError) as err:
        raise InputError(f"LoRA {name}: {file.name} is not a readable safetensors file ({err})") from None


def lora_module_names(lora_dir: str, weight_name: str = LORA_WEIGHT_NAME) -> set[str]:
    """The transformer modules a diffusers-format LoRA file adapts (``transformer.`` prefix removed)."""
    keys = _safetensors_keys(Path(lora_dir) / weight_name, lora_dir)
    return {k.split(".lora_")[0].removeprefix("transformer.") for k in keys if ".lora_" in k}


def peft_to_diffusers(lora_dir: str, name: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A PEFT adapter directory as a diffusers LoRA: (state dict keyed by transformer module, no prefix;
    the LoRA config for the diffusers metadata). ``peft-wan`` keys are renamed by diffusers' converter."""
    import safetensors.torch
    from safetensors import SafetensorError

    name = name or lora_dir
    fmt = lora_format(lora_dir, name)
    if fmt == "diffusers":
        raise InputError(f"LoRA {name}: already in diffusers format")
    try:
        state = safetensors.torch.load_file(str(Path(lora_dir) / PEFT_WEIGHTS))
    except (OSError, SafetensorError) as err:
        raise InputError(f"LoRA {name}: {PEFT_WEIGHTS} is not a readable safetensors file ({err})") from None
    if not state or not all(k.startswith(PEFT_PREFIX) and ".lora_" in k for k in state):
        raise InputError(f"LoRA {name}: {PEFT_WEIGHTS} does not hold PEFT LoRA weights "
                         f"(keys {PEFT_PREFIX}<module>.lora_A/B.weight)")
    config = _peft_config(lora_dir, name) if (Path(lora_dir) / PEFT_CONFIG).is_file() else \
        _official_config(state, name)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
    if fmt == "peft-wan":
        if config.rank_pattern or config.alpha_pattern:
            raise InputError(f"LoRA {name}: rank_pattern/alpha_pattern on original Wan module names cannot be "
                             "renamed to diffusers modules")
        from diffusers import WanPipeline

        try:
            state = WanPipeline.lora_state_dict({f"diffusion_model.{k}": v for k, v in state.items()})
        except (ValueError, KeyError) as err:
            raise InputError(f"LoRA {name}: original Wan module names diffusers cannot convert "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
    metadata = {key: getattr(config, key) for key in _CONFIG_KEYS}
    # The exact modules of the file: a LoRA made for another architecture then fails to load instead
    # of adapting whatever modules share a name.
    metadata["target_modules"] = sorted({k.split(".lora_")[0] for k in state})
    return state, metadata


def _peft_config(lora_dir: str, name: str):
    from peft import LoraConfig

    try:
        config = LoraConfig.from_pretrained(lora_dir)
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
        raise InputError(f"LoRA {name}: {PEFT_CONFIG} is not a LoRA config ({type(err).__name__}: {err})") from None
    if not isinstance(config, LoraConfig):
        raise InputError(f"LoRA {name}: {PEFT_CONFIG} is a {type(config).__name__}, not a LoRA")
    return config


def _official_config(state: dict[str, Any], name: str):
    """The LoraConfig of a released adapter without its config, as the official training sets it."""
    from peft import LoraConfig

    ranks = {v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise InputError(f"LoRA {name}: no {PEFT_CONFIG} and its lora_A ranks differ ({sorted(ranks)}); "
                         "give the adapter's config")
    rank = ranks.pop()
    modules = sorted({k.removeprefix(PEFT_PREFIX).split(".lora_")[0] for k in state})
    kinds = sorted({_BLOCK_INDEX.sub("", m) for m in modules})  # e.g. attn1.to_q, not one line per block
    alpha = OFFICIAL_ALPHA_PER_RANK * rank
    logger.warning("LoRA %s: no %s; assuming the official training's config: r %d (from the weights' shapes), "
                   "lora_alpha %g (2 r: the official r 64 / alpha 128), the %d modules it holds (%s)",
                   name, PEFT_CONFIG, rank, alpha, len(modules), ", ".join(kinds))
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules)


def write_diffusers_lora(state: dict[str, Any], metadata: dict[str, Any], out_dir: str,
                         weight_name: str = LORA_WEIGHT_NAME) -> str:
    """Write a transformer LoRA as diffusers does (``save_lora_weights`` of its LoRA loaders): keys and
    metadata under the ``transformer`` prefix. Returns the file's path."""
    from diffusers.loaders.lora_base import LoraBaseMixin

    os.makedirs(out_dir, exist_ok=True)
    LoraBaseMixin.write_lora_layers(
        state_dict=LoraBaseMixin.pack_weights(state, "transformer"),
        save_directory=out_dir,
        is_main_process=True,
        weight_name=weight_name,
        save_function=None,
        safe_serialization=True,
        lora_adapter_metadata=LoraBaseMixin.pack_weights(metadata, "transformer"),
    )
    return os.path.join(out_dir, weight_name)


def diffusers_to_peft(lora_dir: str, name: str | None = None) -> tuple[dict[str, Any], Any]:
    """A one-transformer diffusers-format LoRA as the official releases' PEFT layout: (state dict keyed
    ``base_model.model.<module>.lora_A.weight``; the LoraConfig, targets named as the official training's:
    ``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""
    import safetensors.torch
    from peft import LoraConfig
    from safetensors import safe_open

    name = name or lora_dir
    if lora_format(lora_dir, name) != "diffusers":
        raise InputError(f"LoRA {name}: already a PEFT adapter; nothing to convert")
    path = Path(lora_dir)
    experts = sorted(f.name for f in path.glob("pytorch_lora_weights*.safetensors"))
    if experts != [LORA_WEIGHT_NAME]:
        raise InputError(f"LoRA {name}: {len(experts)} expert files ({', '.join(experts)}); a PEFT adapter holds "
                         "one transformer's LoRA")
    with safe_open(str(path / LORA_WEIGHT_NAME), framework="pt") as f:
        packed = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    meta = {k.removeprefix("transformer."): v for k, v in packed.items() if k.startswith("transformer.")}
    if "r" not in meta or "lora_alpha" not in meta:
        raise InputError(f"LoRA {name}: {LORA_WEIGHT_NAME} has no LoRA config (r, lora_alpha) in its metadata")
    state = safetensors.torch.load_file(str(path / LORA_WEIGHT_NAME))
    state = {PEFT_PREFIX + k.removeprefix("transformer."): v for k, v in state.items() if ".lora_" in k}
    modules = {k.removeprefix(PEFT_PREFIX).split(".lora_")[0] for k in state}
    targets = sorted({_ATTENTION_PREFIX.sub("", m) for m in modules})
    config = LoraConfig(r=meta["r"], lora_alpha=meta["lora_alpha"], target_modules=targets, inference_mode=True,
                        **{k: meta[k] for k in _CONFIG_KEYS if k in meta and k not in ("r", "lora_alpha")})
    return state, config


def _write_dir(out_dir: str, write) -> None:
    """Make ``out_dir`` whole under a temporary name, then rename: a failure leaves nothing half-written."""
    if os.path.exists(out_dir):
        raise InputError(f"{out_dir}: already exists; give a new directory for the converted LoRA")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    try:
        write(tmp)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_lora(lora_dir: str, out_dir: str, to: Literal["diffusers", "peft"] = "diffusers") -> LoraFormat:
    """Write ``lora_dir`` as a LoRA directory ``out_dir`` in format ``to``: a PEFT adapter (official
    release) as diffusers format, or a videogpa (diffusers-format) LoRA in the official releases' PEFT
    layout (``adapter_model.safetensors`` + ``adapter_config.json``). A model card (README.md) goes with
    it. Returns the source format."""
    fmt = lora_format(lora_dir)
    if to == "diffusers":
        if fmt == "diffusers":
            raise InputError(f"LoRA {lora_dir}: already in diffusers format; nothing to convert")
        state, metadata = peft_to_diffusers(lora_dir)

        def write(tmp: str) -> None:
            write_diffusers_lora(state, metadata, tmp)
            _copy_card(lora_dir, tmp)
    else:
        import safetensors.torch

        peft_state, config = diffusers_to_peft(lora_dir)

        def write(tmp: str) -> None:
            safetensors.torch.save_file(peft_state, os.path.join(tmp, PEFT_WEIGHTS), metadata={"format": "pt"})
            config.save_pretrained(tmp)
            _copy_card(lora_dir, tmp)
    _write_dir(out_dir, write)
    return fmt


def _copy_card(src: str, dst: str) -> None:
    card = Path(src) / MODEL_CARD
    if card.is_file():
        shutil.copyfile(card, Path(dst) / MODEL_CARD)


@contextlib.contextmanager
def diffusers_lora_dir(lora_dir: str, name: str | None = None) -> Iterator[str]:
    """``lora_dir`` itself when it is in diffusers format, else a temporary diffusers-format copy:
    every format then loads through the one diffusers path."""
    if lora_format(lora_dir, name) == "diffusers":
        yield lora_dir
        return
    state, metadata = peft_to_diffusers(lora_dir, name)
    with tempfile.TemporaryDirectory(prefix="videogpa-lora-") as tmp:
        write_diffusers_lora(state, metadata, tmp)
        yield tmp
