"""Optional int8 dreaming on CPU: the world model's RetNet layers with int8 weights.

Dynamic quantization (``torch.ao.quantization.quantize_dynamic``) stores the weights of the
decoder's linear layers as int8 and quantizes their inputs on the fly, per call; products run in
int8 (fbgemm) and come back as float32. On the project's 2-core VMs this made a paper-size POP
step 2.2-2.8x faster on a CPU with AVX-512 VNNI and about 1.15-1.4x on an earlier one (see
docs/benchmarks.md). It changes the numbers: the dreams of a quantized
model are close to, not equal to, those of the float model (its fidelity cost is measured on the
Dream vs reality page). The embeddings, the output heads and the tokenizer stay float32.

It relies on ``torch.ao.quantization``, which PyTorch marks deprecated; it is present in every
torch this package supports (``torch<2.14``).
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from rem_env.model import REMModel

__all__ = ["QUANTIZATIONS", "Quantization", "quantize_model"]

Quantization = Literal["int8"]
QUANTIZATIONS: tuple[str, ...] = ("int8",)
"""The accepted values of ``quantize`` (None means float32, the default)."""


def quantize_model(model: REMModel, mode: Quantization = "int8") -> REMModel:
    """A copy of ``model`` whose world-model layers run with int8 weights, for CPU dreaming.

    The copy is in eval mode and meant for imagination only (no training, no saving; save
    the float model instead). ``model`` itself is not changed.

    Args:
        model: A float32 REMModel on the CPU.
        mode: ``"int8"`` (dynamic quantization of the RetNet layers' linear maps).

    Returns:
        The quantized copy; ``copy.quantization == "int8"``.

    Raises:
        ValueError: For an unknown mode, a model that is not float32 on the CPU, or one that is
            quantized already.

    Example:
        >>> import torch
        >>> from rem_env import REMConfig, REMModel
        >>> from rem_env.quantization import quantize_model
        >>> model = REMModel(REMConfig.preset("tiny", num_actions=4))
        >>> fast = quantize_model(model)
        >>> with torch.inference_mode():
        ...     state = fast.start_state(fast.start_tokens[:2], fast.start_actions[:2])
        ...     step, state = fast.imagine_step(state, torch.tensor([0, 1]))
        >>> step.obs_tokens.shape, fast.quantization, model.quantization
        (torch.Size([2, 16]), 'int8', None)
    """
    if mode not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {list(QUANTIZATIONS)}")
    if model.quantization is not None:
        raise ValueError(f"the model is quantized already ({model.quantization})")
    weight = model.world_model.embedding.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        raise ValueError(
            f"int8 quantization needs a float32 model on the CPU; this one is {weight.dtype} on "
            f"{weight.device} (quantize on the CPU, and dream there: int8 kernels are CPU-only)"
        )
    quantized = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        # torch.ao.quantization warns that it is deprecated, at import and for each layer.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        quantize_dynamic(
            quantized.world_model.decoder, {nn.Linear}, dtype=torch.qint8, inplace=True
        )
    quantized.quantization = mode
    return quantized
