"""Networks: observation encoders (``encoders.py``) and heads on their features (``heads.py``)."""

from robot_rl.nets.encoders import EncoderConfig, ObservationEncoder, ObservationSpec, SpecError
from robot_rl.nets.heads import (
    Critic,
    Deterministic,
    DeterministicActor,
    EnsembleLinear,
    NoisyDeterministicActor,
    TanhGaussian,
    TanhGaussianActor,
    ValueNetwork,
)

__all__ = [
    "Critic",
    "Deterministic",
    "DeterministicActor",
    "EncoderConfig",
    "EnsembleLinear",
    "NoisyDeterministicActor",
    "ObservationEncoder",
    "ObservationSpec",
    "SpecError",
    "TanhGaussian",
    "TanhGaussianActor",
    "ValueNetwork",
]
