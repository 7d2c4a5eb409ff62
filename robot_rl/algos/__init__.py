"""Offline RL algorithms, one file each; ``ALGOS`` maps a config name to the class.

``ALGOS[name].config_class`` is its config dataclass; build with ``ALGOS[name](cfg, spec, device)``
(an :class:`Algorithm`), or only its acting networks with ``ALGOS[name].build_policy(cfg, spec)``.
"""

from robot_rl.algos.actionable_models import ActionableModels, ActionableModelsConfig
from robot_rl.algos.awac import AWAC, AWACConfig
from robot_rl.algos.base import (
    AlgoConfig,
    Algorithm,
    BaseAlgorithm,
    Encoded,
    Policy,
    TrainedPolicy,
    encode,
    polyak_update,
)
from robot_rl.algos.bc import BC, BCConfig
from robot_rl.algos.bcq import BCQ, BCQConfig
from robot_rl.algos.bear import BEAR, BEARConfig
from robot_rl.algos.brac import BRAC, BRACConfig
from robot_rl.algos.calql import CalQL, CalQLConfig
from robot_rl.algos.combo import COMBO, COMBOConfig
from robot_rl.algos.cql import CQL, CQLConfig
from robot_rl.algos.dt import DT, DTConfig, DTPolicy
from robot_rl.algos.edac import EDAC, EDACConfig
from robot_rl.algos.iql import IQL, IQLConfig
from robot_rl.algos.lspi import LSPI, LSPIConfig
from robot_rl.algos.mopo import MOPO, MOPOConfig
from robot_rl.algos.morel import MOReL, MOReLConfig
from robot_rl.algos.mt_opt import MTOpt, MTOptConfig
from robot_rl.algos.qtopt import CEMConfig, CEMPolicy, QTOpt, QTOptConfig
from robot_rl.algos.rebrac import ReBRAC, ReBRACConfig
from robot_rl.algos.rem import REM, REMConfig
from robot_rl.algos.sac import SAC, SACConfig
from robot_rl.algos.sac_n import SACN, SACNConfig
from robot_rl.algos.td3bc import TD3BC, TD3BCConfig
from robot_rl.algos.tt import TT, TTConfig, TTPolicy
from robot_rl.algos.uwac import UWAC, UWACConfig

ALGOS: dict[str, type[BaseAlgorithm]] = {
    "bc": BC,
    "iql": IQL,
    "cql": CQL,
    "calql": CalQL,
    "awac": AWAC,
    "td3bc": TD3BC,
    "sac": SAC,
    "qtopt": QTOpt,
    "actionable_models": ActionableModels,
    "mt_opt": MTOpt,
    "bcq": BCQ,
    "bear": BEAR,
    "uwac": UWAC,
    "brac": BRAC,
    "sac_n": SACN,
    "edac": EDAC,
    "rem": REM,
    "rebrac": ReBRAC,
    "lspi": LSPI,
    "mopo": MOPO,
    "morel": MOReL,
    "combo": COMBO,
    "dt": DT,
    "tt": TT,
}

__all__ = [
    "ALGOS",
    "AWAC",
    "BC",
    "BCQ",
    "BEAR",
    "BRAC",
    "COMBO",
    "CQL",
    "DT",
    "EDAC",
    "IQL",
    "LSPI",
    "MOPO",
    "REM",
    "SAC",
    "SACN",
    "TD3BC",
    "TT",
    "UWAC",
    "AWACConfig",
    "ActionableModels",
    "ActionableModelsConfig",
    "AlgoConfig",
    "Algorithm",
    "BCConfig",
    "BCQConfig",
    "BEARConfig",
    "BRACConfig",
    "BaseAlgorithm",
    "CEMConfig",
    "CEMPolicy",
    "COMBOConfig",
    "CQLConfig",
    "CalQL",
    "CalQLConfig",
    "DTConfig",
    "DTPolicy",
    "EDACConfig",
    "Encoded",
    "IQLConfig",
    "LSPIConfig",
    "MOPOConfig",
    "MOReL",
    "MOReLConfig",
    "MTOpt",
    "MTOptConfig",
    "Policy",
    "QTOpt",
    "QTOptConfig",
    "REMConfig",
    "ReBRAC",
    "ReBRACConfig",
    "SACConfig",
    "SACNConfig",
    "TD3BCConfig",
    "TTConfig",
    "TTPolicy",
    "TrainedPolicy",
    "UWACConfig",
    "encode",
    "polyak_update",
]
