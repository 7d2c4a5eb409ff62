"""A small GPT-style causal transformer over token sequences (the Decision Transformer's trunk).

``CausalTransformer(tokens (B, L, D), valid (B, L) | None) -> (B, L, D)``: a learned positional
embedding per token position, then ``layers`` pre-LayerNorm blocks::

    h ← h + Attn(LN(h))        causal multi-head self-attention: token i attends to tokens j ≤ i
    h ← h + MLP(LN(h))         Linear(D, 4D), GELU, Linear(4D, D)

and a final LayerNorm (GPT-2's layout, Radford et al. 2019; Chen et al. 2021 use GPT-2 for the
Decision Transformer). Attention is ``F.scaled_dot_product_attention`` with ``is_causal`` when no validity is given,
else with an explicit boolean mask ``allowed[i, j] = (j ≤ i) ∧ (valid_j ∨ j = i)``:
padding tokens (left padding of windows shorter than the context) are never attended to, and a
padding token attends to itself alone so no row of the softmax is empty (its output is unused).

No dropout: it would draw from torch's global RNG, and every random number of an algorithm comes
from its own generator (bitwise resume, same seed ⇒ same result).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where token i sees tokens j ≤ i (and only valid ones)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the embedding size {dim} must be divisible by the number of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, H, L, Dh)
        if allowed is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, Dh)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])  # (B, H, L, Dh)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))  # (B, L, D)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: attention then MLP, each residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.mlp(self.ln2(x))


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) bool valid tokens -> (B, L, L) bool: ``allowed[b, i, j] = j ≤ i and (valid[b, j] or j = i)``."""
    L = valid.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()  # (L, L)
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    return causal & (valid[:, None, :] | eye)  # (B, L, L)


class CausalTransformer(nn.Module):
    """Tokens (B, L, D) -> outputs (B, L, D); the output at i depends on tokens 0..i only.

    Args:
        dim: the token size D.
        layers: number of blocks.
        heads: attention heads (must divide ``dim``).
        max_tokens: the longest sequence (positional embeddings).
    """

    def __init__(self, dim: int, layers: int, heads: int, max_tokens: int):
        super().__init__()
        self.max_tokens = max_tokens
        self.pos = nn.Embedding(max_tokens, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        B, L, _ = tokens.shape
        if L > self.max_tokens:
            raise ValueError(f"{L} tokens, but the transformer has positions for {self.max_tokens}")
        if valid is not None and valid.shape != (B, L):
            raise ValueError(f"valid must be (B, L) = {(B, L)}, got {tuple(valid.shape)}")
        h = tokens + self.pos(torch.arange(L, device=tokens.device))  # (B, L, D)
        allowed = None if valid is None else causal_mask(valid)  # (B, L, L)
        for block in self.blocks:
            h = block(h, allowed)
        return self.ln(h)  # (B, L, D)
