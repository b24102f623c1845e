"""Does the network use what a label says? The kernels of ``evaluate ablate`` (pure tensor code).

Linear Explanations' ablation score (Oikarinen & Weng, ICML 2024; ``simulate_ablation.py``), written
from its definition. For a unit u, images x of the scoring split and the model's loss L:

* the *baseline* moves the unit to its mean activation on the validation split (removing what it
  carries), the *prediction* moves it to what its label or explanation predicts, mapped to the
  unit's scale (:func:`map_norm`: the prediction standardised, times the unit's standard deviation
  and the prediction's correlation with it, plus its mean, all from the validation split);
* ``score = 1 − Σ_x |L_pred(x) − L(x)| / Σ_x |L_base(x) − L(x)|``: 1 when the prediction undoes all
  of the baseline's damage, 0 when none, below 0 when it does more damage than the mean.

L is the cross-entropy against the true class of logits divided by a temperature (theirs: 1.1),
or, on a probe without classes, the KL divergence of the edited output's distribution from the
unedited one (L(x) = 0).

Moving a unit (:func:`edit`): a neuron's channel is shifted by Δ = target − actual at every position
(the summary it was recorded with moves by Δ, and Δ = 0 is no edit); a direction or SAE latent moves
the layer's activation by Δ times its decoder row at every position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Linear Explanations' calibration temperature of the logits (``--calibration_temp``).
TEMPERATURE = 1.1


def map_norm(pred_test: torch.Tensor, act_val: torch.Tensor, pred_val: torch.Tensor) -> torch.Tensor:
    """[n_test, U]: each unit's prediction on the scoring images, standardised over them, times the unit's
    standard deviation and the prediction's correlation with it on the validation images, plus the unit's mean
    there (their ``simulate_ablation_norm``). Standard deviations are the unbiased ones, as torch.std; NaN for a
    unit whose prediction is constant."""
    p, a = pred_test.double(), act_val.double()
    z = (p - p.mean(dim=0)) / p.std(dim=0)
    return z * a.std(dim=0) * correlations(a, pred_val) + a.mean(dim=0)


def correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(U,) float64: Pearson's r of each column of ``a`` with the same column of ``b`` (NaN for a constant one)."""
    va, vb = a.double() - a.double().mean(dim=0), b.double() - b.double().mean(dim=0)
    return (va * vb).sum(dim=0) / torch.sqrt((va ** 2).sum(dim=0) * (vb ** 2).sum(dim=0))


def _channels_second(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A view of ``x`` with its channels on axis 1 (writes go to ``x``)."""
    if layout in ("nc", "nchw", "ncl"):
        return x
    if layout == "nlc":
        return x.transpose(1, 2)
    if layout == "nhwc":
        return x.permute(0, 3, 1, 2)
    raise ValueError(f"unknown layout {layout!r}")


def edit(out: torch.Tensor, layout: str, rows: torch.Tensor, channels: torch.Tensor | None, deltas: torch.Tensor,
         decoder: torch.Tensor | None = None, inplace: bool = False) -> torch.Tensor:
    """``out`` (a layer's output, batch first) with row ``rows[i]`` moved by ``deltas[i]``: on channel
    ``channels[i]`` at every position, or along ``decoder[channels[i]]`` (a [K, C] decoder) at every position.
    Edits of one row add up. A new tensor unless ``inplace`` (for a tensor nothing else holds)."""
    out = out if inplace else out.clone()
    if rows.numel() == 0:
        return out
    view = _channels_second(out, layout)
    d = deltas.to(out.dtype)
    positions = (1,) * (view.dim() - 2)
    if decoder is not None:
        vec = decoder.to(out.device, out.dtype)[channels] * d[:, None]          # [E, C]
        view.index_put_((rows,), vec.reshape(vec.shape + positions).expand((len(rows),) + view.shape[1:]),
                        accumulate=True)
        return out
    view.index_put_((rows, channels), d.reshape((-1,) + positions).expand((len(rows),) + view.shape[2:]),
                    accumulate=True)
    return out


def losses(logits: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor | None,
           temperature: float = TEMPERATURE) -> torch.Tensor:
    """Per-sample loss of ``logits`` [S, classes]: cross-entropy against ``targets`` (S,), or without targets the KL
    divergence of softmax(logits / T) from softmax(reference / T) (``reference`` [S, classes], each sample's
    unedited output). float64."""
    lg = logits.double() / temperature
    if targets is not None:
        return F.cross_entropy(lg, targets, reduction="none")
    ref = F.log_softmax(reference.double() / temperature, dim=-1)
    return (ref.exp() * (ref - F.log_softmax(lg, dim=-1))).sum(dim=-1)


def score(damage_pred: float, damage_base: float) -> float:
    """``1 − damage_pred / damage_base`` (sums of |loss change| over the scoring images); NaN without damage."""
    if not damage_base > 0 or not math.isfinite(damage_pred) or not math.isfinite(damage_base):
        return math.nan
    return 1.0 - damage_pred / damage_base
