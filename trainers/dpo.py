"""Diffusion-DPO objective (pure tensor math, no distribution concerns).

Convention (SPEC §1, the VideoGPA reference configs, β = 1)::

    L = −log σ( β · [ (E_ref,w − E_θ,w) − (E_ref,l − E_θ,l) ] )

with E = per-sample *mean* squared error between the model's prediction and its training
target (v-prediction target for CogVideoX, ``noise − x0`` for flow-matching Wan), winner (w)
and loser (l) noised with the same noise and timestep.

Relation to other codebases: the Diffusion-DPO paper (Wallace et al. 2023) and its SD/SDXL
code write ``L = −log σ(−½·β·T·[(E_θ,w − E_ref,w) − (E_θ,l − E_ref,l)])`` or
``scale_term = −0.5·β_dpo`` with β_dpo ≈ 2000–5000 (the T and ½ folded in). That is the same
expression with β_here = ½·β_dpo·(T or 1): the sign flip is absorbed by writing the
differences as reference − policy. Because E here is a *mean* over all latent elements
(not a sum), the usable β range also depends on the latent size; β = 1 matches the
VideoGPA configs for 5B video models. Port a β from elsewhere as β_here = 0.5·β_dpo only if
their E is also a per-element mean.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def per_sample_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per sample, reduced over every non-batch dim, computed in float32
    (bf16 sums over ~10^6 latent elements lose the small policy-vs-reference differences)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    diff = pred.float() - target.float()
    return diff.pow(2).reshape(diff.shape[0], -1).mean(dim=1)


# The preference losses of the official VideoGPA trainer, on logits = β·(advantage_w − advantage_l).
LossType = Literal["sigmoid", "hinge", "label_smoothed"]


def preference_loss(logits: torch.Tensor, loss_type: LossType = "sigmoid",
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of:
    ``sigmoid``: −log σ(x) (DPO); ``hinge``: max(0, 1 − x) (SLiC); ``label_smoothed``:
    −(1−ε)·log σ(x) − ε·log σ(−x), i.e. binary cross-entropy against the label 1 − ε
    (conservative DPO: the preference label is wrong with probability ε)."""
    if loss_type == "sigmoid":
        return -F.logsigmoid(logits).mean()  # logsigmoid: stable for large |logits|
    if loss_type == "hinge":
        return F.relu(1.0 - logits).mean()
    if loss_type == "label_smoothed":
        return (-(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)).mean()
    raise ValueError(f"unknown preference loss {loss_type!r} (sigmoid|hinge|label_smoothed)")


def dpo_loss(
    model_err_w: torch.Tensor,
    model_err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    loss_type: LossType = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Diffusion-DPO loss, mean over the batch. All inputs are per-sample errors of shape [B].
    ``loss_type`` / ``label_smoothing``: see :func:`preference_loss` (the default is the SPEC's loss).

    Returns ``(loss, metrics)``; metrics (python floats, batch means):
      - ``loss``
      - ``reward_margin``: β·[(E_ref,w − E_θ,w) − (E_ref,l − E_θ,l)], the implicit DPO reward of the
        winner minus the loser (0 at init since policy == reference)
      - ``reward_accuracy``: fraction of pairs with that margin > 0
      - ``policy_reward_margin`` / ``policy_reward_accuracy``: the official VideoGPA trainer's
        definitions, from the policy alone: E_θ,l − E_θ,w, and the fraction of pairs where the policy
        fits the winner better than the loser (not 0.5 at init: it measures the pairs as much as the policy)
      - ``policy_ref_gap_w`` / ``policy_ref_gap_l``: E_θ − E_ref for winner / loser (training
        should push the winner's gap negative and the loser's positive)
    """
    ref_err_w = ref_err_w.detach()
    ref_err_l = ref_err_l.detach()
    adv_w = ref_err_w - model_err_w  # how much better than the reference the policy fits w
    adv_l = ref_err_l - model_err_l
    logits = beta * (adv_w - adv_l)
    loss = preference_loss(logits, loss_type, label_smoothing)
    with torch.no_grad():
        policy_margin = model_err_l - model_err_w
        metrics = {
            "loss": float(loss.detach()),
            "reward_margin": float(logits.mean()),
            "reward_accuracy": float((logits > 0).float().mean()),
            "policy_reward_margin": float(policy_margin.mean()),
            "policy_reward_accuracy": float((policy_margin > 0).float().mean()),
            "policy_ref_gap_w": float((model_err_w - ref_err_w).mean()),
            "policy_ref_gap_l": float((model_err_l - ref_err_l).mean()),
        }
    return loss, metrics
