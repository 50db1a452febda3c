"""DreamerV3 (Hafner et al., Nature 2025) as a Stable-Baselines3 algorithm."""

from physlink_gym.agents.dreamerv3.algorithm import DreamerV3
from physlink_gym.agents.dreamerv3.config import DreamerV3Config, make_config

__all__ = ["DreamerV3", "DreamerV3Config", "make_config"]
