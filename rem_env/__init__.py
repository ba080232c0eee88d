"""rem-env: REM token-based world models as batched Gymnasium dream environments.

Importing the package registers ``REM-<Game>-v0`` for the 26 Atari 100K games;
``gym.make("rem_env:REM-Breakout-v0", model=...)`` imports it for you.
"""

from rem_env.config import REMConfig, TokenizerConfig, WorldModelConfig
from rem_env.dream import DreamVectorEnv
from rem_env.dream_env import DreamEnv
from rem_env.hub import ModelLoadError, load_model
from rem_env.manifest import AtariProtocol, ProtocolManifest
from rem_env.model import REMModel
from rem_env.registration import register_dream_envs
from rem_env.state import ImaginationState

__all__ = [
    "AtariProtocol",
    "DreamEnv",
    "DreamVectorEnv",
    "ImaginationState",
    "ModelLoadError",
    "ProtocolManifest",
    "REMConfig",
    "REMModel",
    "TokenizerConfig",
    "WorldModelConfig",
    "load_model",
]

__version__ = "0.1.0"

register_dream_envs()
