"""rem-env: REM token-based world models as batched Gymnasium dream environments."""

from rem_env.config import REMConfig, TokenizerConfig, WorldModelConfig
from rem_env.model import REMModel
from rem_env.state import ImaginationState

__all__ = ["ImaginationState", "REMConfig", "REMModel", "TokenizerConfig", "WorldModelConfig"]

__version__ = "0.1.0"
