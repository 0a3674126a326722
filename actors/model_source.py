"""Where a base model's files come from, checked on the driver before any actor loads them.

``model.pretrained`` is ``"tiny"`` (built in code), a local diffusers directory, or a Hugging Face
model id. A mistake there used to surface as an actor dying in its constructor; here it is one line
naming ``model.pretrained``. Only small ``config.json`` files are read (from the directory, the
Hugging Face cache, or the hub when online), never weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from actors.errors import InputError
from actors.families import get_family
from actors.model_config import RANDOM_FULL_SIZE, ModelConfig, SamplingConfig, SamplingShape, check_sampling


def looks_local(source: str) -> bool:
    """Whether a model source (``model.pretrained``, ``scoring.weights``) is a local path rather than a
    Hugging Face model id: it starts like a path or exists."""
    return source.startswith(("/", ".", "~")) or os.path.exists(source)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def check_model_source(model: ModelConfig) -> None:
    """The model's files are where ``model.pretrained`` says, or one InputError naming it."""
    source = model.pretrained
    if source in ("tiny", RANDOM_FULL_SIZE):
        return
    if looks_local(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise InputError(f"model.pretrained: directory {source!r} does not exist")
        if not (path / "model_index.json").is_file():
            raise InputError(f"model.pretrained: {source!r} holds no diffusers model (no model_index.json)")
        return
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError:
        raise InputError(f"model.pretrained: {source!r} is neither an existing directory nor a Hugging Face "
                         "model id (owner/name)") from None
    if "/" not in source:
        raise InputError(f"model.pretrained: {source!r} is not a Hugging Face model id (owner/name) "
                         "nor an existing directory")
    if _offline() and not isinstance(try_to_load_from_cache(source, "model_index.json", revision=model.revision), str):
        raise InputError(f"model.pretrained: {source!r} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
                         f"and HF_HUB_OFFLINE is set; download it first: huggingface-cli download {source}")


def _component_config(model: ModelConfig, component: str) -> dict[str, Any]:
    """``<component>/config.json`` of a real model (check_model_source first)."""
    if looks_local(model.pretrained):
        path = Path(model.pretrained).expanduser() / component / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(model.pretrained, f"{component}/config.json", revision=model.revision))
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"model.pretrained: cannot read {component}/config.json of {model.pretrained!r} "
                         f"({type(err).__name__})") from None


def model_sampling_shape(model: ModelConfig) -> SamplingShape:
    """The sizes ``model`` can sample, from its configs alone (no weights loaded)."""
    family = get_family(model.family)
    if model.pretrained == RANDOM_FULL_SIZE:
        vae, transformer = family.full_size_config("vae"), family.full_size_config("transformer")
    elif model.pretrained == "tiny":
        vae, transformer = family.tiny_component_configs()
    else:
        vae, transformer = _component_config(model, "vae"), _component_config(model, "transformer")
    return family.sampling_shape(vae, transformer)


def check_model(model: ModelConfig, sampling: SamplingConfig) -> None:
    """The driver's check of the model section: its files exist and it can sample ``sampling``."""
    check_model_source(model)
    check_sampling(model_sampling_shape(model), model, sampling)
