"""
Register M3PO and its Optuna sampler with rl-zoo3, and our env ids with gymnasium.

Registration must happen before rl-zoo3 parses argv (its ``--algo`` choices are read from
``rl_zoo3.utils.ALGOS`` at parse time), which is why :mod:`sb3_m3po.zoo.train` calls
:func:`register` first instead of relying on ``--gym-packages``.
"""

from sb3_m3po.envs import register_envs
from sb3_m3po.m3po import M3PO
from sb3_m3po.zoo.sampler import convert_m3po_params, sample_m3po_params


def register() -> None:
    """Register ``m3po`` with rl-zoo3 (algorithm, sampler, converter) and our env ids with gymnasium."""
    from rl_zoo3 import hyperparams_opt, utils

    utils.ALGOS["m3po"] = M3PO
    hyperparams_opt.HYPERPARAMS_SAMPLER["m3po"] = sample_m3po_params
    hyperparams_opt.HYPERPARAMS_CONVERTER["m3po"] = convert_m3po_params  # type: ignore[assignment]  # same call, named args differ
    register_envs()
