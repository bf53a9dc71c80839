"""rl-zoo3 integration: registration, the train/enjoy CLI, the Optuna sampler, callbacks and shipped hyperparameters."""

from sb3_m3po.common.hyperparams import hyperparams_dir, shipped_entry
from sb3_m3po.zoo.hyperparams import shipped_config
from sb3_m3po.zoo.registration import register
from sb3_m3po.zoo.sampler import convert_m3po_params, sample_m3po_params

__all__ = ["convert_m3po_params", "hyperparams_dir", "register", "sample_m3po_params", "shipped_config", "shipped_entry"]
