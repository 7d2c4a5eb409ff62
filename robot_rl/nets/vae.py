"""A conditional VAE of the data's actions on encoder features: BCQ's generative model ``G_ω(s)``.

BCQ (Fujimoto, Meger & Precup, 2019, §4 and its reference code sfujim/BCQ ``BCQ.py::VAE``) models the
behaviour policy with a conditional VAE; BEAR, UWAC and BRAC draw their behaviour samples from it
too. With ``e`` the embedding of ``s`` (encoder features, computed once per update)::

    encoder  q(z | e, a) = N(μ(e, a), σ(e, a)),   log σ clamped to [−4, 15]
    decoder  â = tanh(D(e, z))                    (the action box [−1, 1])
    L_VAE    = ‖a − â‖² + ½·KL(N(μ, σ) ‖ N(0, I)),
    KL       = −½·(1 + log σ² − μ² − σ²)
    sampling z ~ N(0, I) clipped to [−0.5, 0.5], then â = tanh(D(e, z))

As the reference, both terms are means over every element (the batch and the action / latent
dimensions: ``F.mse_loss`` and ``KL.mean()``), the KL weight is ½, and the latent has ``2·A``
dimensions by default.

API (stable; shared by BCQ, BEAR, UWAC, BRAC):

- ``ConditionalVAE(embedding_dim, action_dim, latent_dim=None, hidden=(750, 750))``
- ``forward(embedding (B, E), action (B, A), generator=None) -> (recon (B, A), mean (B, L), std (B, L))``
- ``decode(embedding (B, E), z=None, generator=None, num=None) -> (B, A)``, or ``(B, M, A)`` with
  ``num=M`` samples per state (or a ``z`` of shape (B, M, L)); ``z=None`` samples a clipped latent.
- ``vae_loss(vae, embedding, actions, kl_weight=0.5, generator=None) -> (loss, metrics)``, a pure
  function; metrics ``vae/loss``, ``vae/recon``, ``vae/kl`` (detached).
- ``gaussian_kl(mean, std) -> (B, L)``: the closed-form KL to N(0, I), elementwise.

Cached embeddings: every first layer reads ``[e, x]`` for M values of ``x`` per state. It is one
``nn.Linear`` over the concatenation (the reference's initialization), applied split,
``W·[e, x] = W_e·e + W_x·x``: ``W_e·e`` is computed once per state and broadcast over the M samples,
so the embedding is never copied M times (``PairMLP``; the perturbation network of BCQ uses it too).
The caller decides whether the VAE trains the encoder: BCQ and BEAR pass detached features.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0  # the reference's clamp of the encoder's log σ
LATENT_CLIP = 0.5  # sampled latents are clipped to [−0.5, 0.5]


class PairMLP(nn.Module):
    """An MLP on ``[e, x]`` where ``e`` (B, E) is shared by the M rows ``x`` (B, M, X) of each state.

    ``forward(e (B, E), x (B, X) or (B, M, X)) -> (B, out)`` or ``(B, M, out)``. The first layer is one
    ``nn.Linear(E + X, H)`` applied as ``W_e·e + b`` once per state plus ``W_x·x`` per row.
    """

    def __init__(self, embedding_dim: int, x_dim: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        if not hidden:
            raise ValueError(f"PairMLP needs at least one hidden layer, got hidden={hidden}")
        self.embedding_dim = embedding_dim
        dims = [embedding_dim + x_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in itertools.pairwise(dims))

    def forward(self, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if e.shape[-1] != self.embedding_dim or x.shape[0] != e.shape[0]:
            raise ValueError(
                f"embedding {tuple(e.shape)} and rows {tuple(x.shape)} do not match E={self.embedding_dim}"
            )
        first = self.layers[0]
        assert isinstance(first, nn.Linear)
        E = self.embedding_dim
        h_e = F.linear(e, first.weight[:, :E], first.bias)  # (B, H)
        h_x = F.linear(x, first.weight[:, E:])  # (B, [M,] H)
        h = h_x + (h_e.unsqueeze(1) if x.dim() == 3 else h_e)  # (B, [M,] H)
        for layer in self.layers[1:]:
            h = layer(F.relu(h))  # (B, [M,] H')
        return h


def check_vae_settings(vae_hidden: tuple[int, ...], latent_dim: int | None, vae_lr: float, kl_weight: float) -> None:
    """The VAE fields of an algorithm's config (BCQ, BEAR, UWAC): a clear ValueError on a bad one."""
    if not vae_hidden or any(h < 1 for h in vae_hidden):
        raise ValueError(f"vae_hidden must be a non-empty tuple of sizes >= 1, got {vae_hidden}")
    if latent_dim is not None and latent_dim < 1:
        raise ValueError(f"latent_dim must be >= 1 or None (2·dim(A)), got {latent_dim}")
    if vae_lr <= 0 or kl_weight < 0:
        raise ValueError(f"vae_lr must be > 0 and kl_weight >= 0, got {vae_lr}, {kl_weight}")


def gaussian_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ) ‖ N(0, 1)) per element: −½·(1 + log σ² − μ² − σ²)."""
    return -0.5 * (1.0 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2))


class ConditionalVAE(nn.Module):
    """``G_ω``: q(z | e, a) and â = tanh(D(e, z)) on cached embeddings ``e`` (see the module docstring)."""

    def __init__(
        self,
        embedding_dim: int,
        action_dim: int,
        latent_dim: int | None = None,
        hidden: tuple[int, ...] = (750, 750),
    ):
        super().__init__()
        self.action_dim = action_dim
        self.latent_dim = 2 * action_dim if latent_dim is None else latent_dim
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        self.encoder = PairMLP(embedding_dim, action_dim, hidden, 2 * self.latent_dim)
        self.decoder = PairMLP(embedding_dim, self.latent_dim, hidden, action_dim)

    def forward(
        self, embedding: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct ``action`` (B, A) through a reparameterized z: -> recon (B, A), mean (B, L), std (B, L)."""
        mean, log_std = self.encoder(embedding, action).chunk(2, dim=-1)  # (B, L) each
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()  # (B, L)
        eps = torch.randn(std.shape, generator=generator, device=std.device, dtype=std.dtype)  # (B, L)
        recon = self.decode(embedding, mean + std * eps)  # (B, A)
        return recon, mean, std

    def decode(
        self,
        embedding: torch.Tensor,
        z: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        num: int | None = None,
    ) -> torch.Tensor:
        """Actions in [−1, 1]: (B, A), or (B, M, A) with ``num=M`` or a z of shape (B, M, L).

        ``z=None`` samples z ~ N(0, I) clipped to [−0.5, 0.5] (the reference's sampling)."""
        if z is None:
            B = embedding.shape[0]
            shape = (B, self.latent_dim) if num is None else (B, num, self.latent_dim)
            z = torch.randn(shape, generator=generator, device=embedding.device, dtype=embedding.dtype)
            z = z.clamp(-LATENT_CLIP, LATENT_CLIP)  # (B, [M,] L)
        elif num is not None and (z.dim() != 3 or z.shape[1] != num):
            raise ValueError(f"z of shape {tuple(z.shape)} given with num={num}: pass one or the other")
        return torch.tanh(self.decoder(embedding, z))  # (B, [M,] A)


def vae_loss(
    vae: ConditionalVAE,
    embedding: torch.Tensor,
    actions: torch.Tensor,
    kl_weight: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_VAE = mean (a − â)² + kl_weight·mean KL(N(μ, σ) ‖ N(0, I)); embedding (B, E), actions (B, A)."""
    recon, mean, std = vae(embedding, actions, generator)  # (B, A), (B, L), (B, L)
    recon_loss = F.mse_loss(recon, actions)
    kl = gaussian_kl(mean, std).mean()
    loss = recon_loss + kl_weight * kl
    metrics = {"vae/loss": loss.detach(), "vae/recon": recon_loss.detach(), "vae/kl": kl.detach()}
    return loss, metrics
