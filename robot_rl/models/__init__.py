"""Learned models of the environment in a frozen encoder's feature space (``dynamics.py``: the MBPO/PETS
ensemble, its fitting, rollouts and a replay of synthetic transitions) for model-based offline RL."""

from robot_rl.models.dynamics import (
    DynamicsConfig,
    DynamicsEnsemble,
    FitReport,
    ModelData,
    ModelReplay,
    ModelStep,
    Transitions,
    dynamics_loss,
    fit_dynamics,
    gaussian_nll,
    make_dynamics_optimizer,
    rollout,
    transitions_from_lake,
    transitions_from_sampler,
)

__all__ = [
    "DynamicsConfig",
    "DynamicsEnsemble",
    "FitReport",
    "ModelData",
    "ModelReplay",
    "ModelStep",
    "Transitions",
    "dynamics_loss",
    "fit_dynamics",
    "gaussian_nll",
    "make_dynamics_optimizer",
    "rollout",
    "transitions_from_lake",
    "transitions_from_sampler",
]
