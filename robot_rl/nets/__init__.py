"""Networks: observation encoders (``encoders.py``) and heads on their features (``heads.py``), a
conditional VAE of actions (``vae.py``)."""

from robot_rl.nets.encoders import EncoderConfig, ObservationEncoder, ObservationSpec, SpecError
from robot_rl.nets.heads import (
    Critic,
    Deterministic,
    DeterministicActor,
    EnsembleLinear,
    Gaussian,
    GaussianActor,
    NoisyDeterministicActor,
    TanhGaussian,
    TanhGaussianActor,
    ValueNetwork,
    make_actor,
)
from robot_rl.nets.vae import ConditionalVAE, PairMLP, check_vae_settings, gaussian_kl, vae_loss

__all__ = [
    "ConditionalVAE",
    "Critic",
    "Deterministic",
    "DeterministicActor",
    "EncoderConfig",
    "EnsembleLinear",
    "Gaussian",
    "GaussianActor",
    "NoisyDeterministicActor",
    "ObservationEncoder",
    "ObservationSpec",
    "PairMLP",
    "SpecError",
    "TanhGaussian",
    "TanhGaussianActor",
    "ValueNetwork",
    "check_vae_settings",
    "gaussian_kl",
    "make_actor",
    "vae_loss",
]
