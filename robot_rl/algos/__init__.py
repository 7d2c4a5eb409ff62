"""Offline RL algorithms, one file each; ``ALGOS`` maps a config name to the class.

``ALGOS[name].config_class`` is its config dataclass; build with ``ALGOS[name](cfg, spec, device)``.
"""

from robot_rl.algos.base import AlgoConfig, Algorithm, Encoded, Policy, encode, polyak_update
from robot_rl.algos.bc import BC, BCConfig
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.algos.iql import IQL, IQLConfig

ALGOS: dict[str, type[Algorithm]] = {"bc": BC, "iql": IQL, "cql": CQL}

__all__ = [
    "ALGOS",
    "BC",
    "CQL",
    "IQL",
    "AlgoConfig",
    "Algorithm",
    "BCConfig",
    "CQLConfig",
    "Encoded",
    "IQLConfig",
    "Policy",
    "encode",
    "polyak_update",
]
