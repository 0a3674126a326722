"""The model card (README.md) of an exported LoRA directory, as diffusers' training scripts write one for
the Hub: YAML front matter (base_model, library_name, tags), what it was trained from and on, the
evaluation table where there is one, and how to load it with diffusers."""

from __future__ import annotations

import os
from dataclasses import dataclass

from actors.lora_formats import MODEL_CARD


@dataclass(frozen=True)
class CardInfo:
    """What the card says. ``lora_scale``: the recipe's ``set_adapters`` weight; ``evaluation``: the
    ``videogpa evaluate`` table, where one was made."""

    base_model: str
    family: str
    pipeline_class: str
    recipe: str
    round_index: int
    rounds: int
    pairs: int
    lora_scale: float
    expert_files: tuple[str, ...]
    evaluation: str | None = None


def model_card(info: CardInfo) -> str:
    """The README.md text of a LoRA directory."""
    tiny = info.base_model == "tiny"
    front = ["---", f"base_model: {info.base_model}" if not tiny else "base_model: null",
             "library_name: diffusers", "tags:", "- lora", "- diffusers", "- videogpa", "- dpo",
             f"- {info.family}", "---", ""]
    load = [f'pipe = {info.pipeline_class}.from_pretrained("{info.base_model}", torch_dtype=torch.bfloat16)']
    if len(info.expert_files) == 1:
        load.append('pipe.load_lora_weights("<this directory>", adapter_name="videogpa")')
    else:  # one file per expert (Wan2.2-A14B): the second goes into transformer_2
        load += [f'pipe.load_lora_weights("<this directory>", weight_name="{info.expert_files[0]}", '
                 'adapter_name="videogpa")',
                 f'pipe.load_lora_weights("<this directory>", weight_name="{info.expert_files[1]}", '
                 'adapter_name="videogpa", load_into_transformer_2=True)']
    load.append(f'pipe.set_adapters(["videogpa"], [{info.lora_scale}])  # the recipe\'s sampling.lora_scale')
    body = [
        f"# VideoGPA LoRA: {info.family}, round {info.round_index}", "",
        "A LoRA trained by videogpa with Diffusion-DPO on preference pairs of its base model's own videos,",
        "ranked by 3D consistency.", "",
        f"- base model: `{info.base_model}`" + (" (the offline tiny preset: random weights)" if tiny else ""),
        f"- recipe: `{info.recipe}`",
        f"- rounds: {info.round_index + 1} of {info.rounds} (this is round {info.round_index}'s LoRA)",
        f"- preference pairs (this round): {info.pairs}",
        f"- files: {', '.join(f'`{f}`' for f in info.expert_files)} (diffusers format; "
        "`videogpa convert-lora --to peft` writes the official releases' PEFT layout)", "",
        "## Evaluation", "",
        *(["```", info.evaluation, "```"] if info.evaluation else
          ["No evaluation yet (`videogpa evaluate` adds its table here)."]), "",
        "## Use with diffusers", "", "```python", "import torch",
        f"from diffusers import {info.pipeline_class}", "", *load, "```", "",
    ]
    return "\n".join(front + body)


def write_model_card(lora_dir: str, text: str) -> str:
    """Write ``text`` as the README.md of the (local) LoRA directory ``lora_dir``; returns its path."""
    path = os.path.join(lora_dir, MODEL_CARD)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
