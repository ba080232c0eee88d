"""The neural networks of REM: retention, RetNet, world model and tokenizer."""

from rem_env.models.sampling import StepNoise, sample_categorical
from rem_env.models.tokenizer import Tokenizer, TokenizerOutput
from rem_env.models.world_model import ImaginationStep, WorldModel, WorldModelOutput

__all__ = [
    "ImaginationStep",
    "StepNoise",
    "Tokenizer",
    "TokenizerOutput",
    "WorldModel",
    "WorldModelOutput",
    "sample_categorical",
]
