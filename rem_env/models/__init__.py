"""The neural networks of REM: retention, RetNet, world model and tokenizer."""

from rem_env.config import TokenizerConfig
from rem_env.models.patch_tokenizer import PatchTokenizer
from rem_env.models.sampling import StepNoise, draw_in_rounds, sample_categorical
from rem_env.models.tokenizer import FrameTokenizer, Tokenizer, TokenizerOutput
from rem_env.models.world_model import ImaginationStep, WorldModel, WorldModelOutput

__all__ = [
    "FrameTokenizer",
    "ImaginationStep",
    "PatchTokenizer",
    "StepNoise",
    "Tokenizer",
    "TokenizerOutput",
    "WorldModel",
    "WorldModelOutput",
    "build_tokenizer",
    "draw_in_rounds",
    "sample_categorical",
]


def build_tokenizer(config: TokenizerConfig) -> FrameTokenizer:
    """The tokenizer of ``config.kind``: REM's VQ-VAE or a :class:`PatchTokenizer`.

    Example:
        >>> from rem_env.config import REMConfig
        >>> type(build_tokenizer(REMConfig.preset("tiny", num_actions=4).tokenizer)).__name__
        'Tokenizer'
    """
    if not isinstance(config, TokenizerConfig):
        raise TypeError(f"config must be a TokenizerConfig, got {type(config).__name__}")
    return PatchTokenizer(config) if config.kind == "patch" else Tokenizer(config)
