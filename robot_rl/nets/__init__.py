"""Networks: observation encoders (``encoders.py``) and heads on their features (``heads.py``)."""

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

__all__ = [
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
    "SpecError",
    "TanhGaussian",
    "TanhGaussianActor",
    "ValueNetwork",
    "make_actor",
]
