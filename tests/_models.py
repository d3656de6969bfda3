"""Small models shared by several test files."""

import torch
import torch.nn as nn

from qlab.model import GPT, PRESETS

OUTLIER_CHANNELS = [3, 17, 40]


def tiny_gpt_with_outliers(factor: float = 1.0, channels=OUTLIER_CHANNELS) -> GPT:
    """The tiny GPT (seed 0) with non-trivial norms (weights U(0.5, 1.5), biases N(0, 0.1)); ``factor``
    scales the LayerNorm weights of ``channels`` in every block: activation outliers / salient inputs."""
    torch.manual_seed(0)
    model = GPT(PRESETS["tiny"]).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
        for blk in model.blocks:
            blk.ln_1.weight[channels] *= factor
            blk.ln_2.weight[channels] *= factor
    return model
