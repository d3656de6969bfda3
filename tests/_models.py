"""Small models shared by several test files."""

import torch
import torch.nn as nn

from qlab.model import GPT, PRESETS, ModelConfig

OUTLIER_CHANNELS = [3, 17, 40]
ONE_BLOCK = ModelConfig(block_size=64, n_layer=1, n_head=2, n_embd=128)   # 6 linears, 128 or 512 wide: group 128 fits


def tiny_gpt() -> GPT:
    """The tiny preset, seed 0, in eval mode."""
    torch.manual_seed(0)
    return GPT(PRESETS["tiny"]).eval()


def one_block_gpt() -> GPT:
    """One block of width 128 (``ONE_BLOCK``), seed 0, in eval mode: every linear takes groups of 128."""
    torch.manual_seed(0)
    return GPT(ONE_BLOCK).eval()


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
