"""No way of changing a world model's weights leaves the no-grad imagination step behind.

Without autograd the step takes its own route (the prediction tokens projected apart, and once
stacked weights and projections kept between steps). Each test runs that route once, changes
the weights in one of the ways training code, target networks or users do, and checks that the
no-grad step then gives the same logits as the autograd route on the same weights."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from rem_env import REMConfig, REMModel
from rem_env.models.sampling import StepNoise
from rem_env.models.world_model import ImaginationStep

B = 3
META = torch.device("meta")


def _model() -> REMModel:
    torch.manual_seed(0)
    return REMModel(REMConfig.preset("tiny", num_actions=4)).eval()


def _step(model: REMModel, grad: bool) -> ImaginationStep:
    """One imagination step from a fixed context, with or without autograd."""
    device = model.start_tokens.device
    k = model.config.tokenizer.tokens_per_frame
    uniforms = torch.linspace(0.05, 0.95, B * (k + 2), device=device).reshape(B, k + 2)
    noise = StepNoise(uniforms[:, :k], uniforms[:, k], uniforms[:, k + 1])
    actions = torch.arange(B, device=device) % model.config.num_actions
    with torch.set_grad_enabled(grad):
        state = model.start_state(
            model.start_tokens[:B], model.start_actions[:B], check_values=device != META
        )
        step, _ = model.imagine_step(state, actions, noise=noise)
    return step


def _assert_no_grad_step_matches_autograd(model: REMModel) -> None:
    got, expected = _step(model, grad=False), _step(model, grad=True)
    for name in ("obs_logits", "reward_logits", "end_logits"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name).detach())


def _first_msr(model: REMModel) -> nn.Module:
    return model.world_model.decoder.layers[0].retention


def _noise_like(t: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.randn(t.shape, generator=torch.Generator().manual_seed(1)).to(t)


def _data_add(model: REMModel) -> None:  # what Polyak averaging does
    for layer in model.world_model.decoder.layers:
        layer.retention.q_proj.weight.data.add_(_noise_like(layer.retention.q_proj.weight))
        layer.retention.g_proj.bias.data.add_(_noise_like(layer.retention.g_proj.bias))


def _data_assign(model: REMModel) -> None:
    weight = _first_msr(model).k_proj.weight
    weight.data = weight.data + _noise_like(weight)


def _prediction_embeddings_data_add(model: REMModel) -> None:
    weight = model.world_model.prediction_embeddings.weight
    weight.data.add_(_noise_like(weight))


def _norm_data_mul(model: REMModel) -> None:  # the prediction tokens' first-layer norm
    model.world_model.decoder.layers[0].norm1.weight.data.mul_(2.0)


def _load_state_dict(model: REMModel) -> None:
    torch.manual_seed(1)
    model.load_state_dict(REMModel(model.config).state_dict())


def _vector_to_parameters(model: REMModel) -> None:
    params = list(model.world_model.parameters())
    vector = nn.utils.parameters_to_vector(params)
    nn.utils.vector_to_parameters(vector + _noise_like(vector), params)


def _copy_under_no_grad(model: REMModel) -> None:
    with torch.no_grad():
        for p in model.world_model.parameters():
            p.copy_(p + _noise_like(p))


def _swap_parameter(model: REMModel) -> None:
    proj = _first_msr(model).v_proj
    proj.weight = nn.Parameter(proj.weight.detach() + _noise_like(proj.weight))


def _apply_init(model: REMModel) -> None:
    torch.manual_seed(2)

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.2)

    model.world_model.apply(init)


def _apply_data_init(model: REMModel) -> None:
    torch.manual_seed(2)

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(std=0.2)  # the older idiom, outside autograd's view

    model.world_model.apply(init)


def _to_float64(model: REMModel) -> None:
    model.to(torch.float64)


def _double(model: REMModel) -> None:
    model.double()


def _double_then_float(model: REMModel) -> None:
    model.double()
    _step(model, grad=False)  # kept at float64 ...
    model.float()  # ... and back


CHANGES: dict[str, Callable[[REMModel], None]] = {
    "data-add": _data_add,
    "data-assign": _data_assign,
    "prediction-embeddings-data-add": _prediction_embeddings_data_add,
    "norm-data-mul": _norm_data_mul,
    "load-state-dict": _load_state_dict,
    "vector-to-parameters": _vector_to_parameters,
    "copy-under-no-grad": _copy_under_no_grad,
    "swap-parameter": _swap_parameter,
    "apply-init": _apply_init,
    "apply-data-init": _apply_data_init,
    "to-float64": _to_float64,
    "double": _double,
    "double-then-float": _double_then_float,
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_no_grad_step_follows_a_weight_change(change: str) -> None:
    model = _model()
    before = _step(model, grad=False)  # the fast route has run (and kept what it keeps)
    CHANGES[change](model)
    _assert_no_grad_step_matches_autograd(model)
    after = _step(model, grad=False)
    if change != "double-then-float":  # every other change moves the logits
        assert not torch.equal(before.obs_logits.to(after.obs_logits), after.obs_logits)


def test_no_grad_step_matches_a_fresh_model_with_the_same_weights() -> None:
    """A write through ``.data`` after a step: the step equals a model built from the weights."""
    model = _model()
    _step(model, grad=False)
    _data_add(model)
    _prediction_embeddings_data_add(model)
    fresh = REMModel(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    for name in ("obs_logits", "reward_logits", "end_logits"):
        torch.testing.assert_close(
            getattr(_step(model, grad=False), name), getattr(_step(fresh, grad=False), name)
        )


@pytest.mark.parametrize("swap", [False, True], ids=["new-parameters", "same-parameters"])
def test_no_grad_step_follows_a_device_move(swap: bool) -> None:
    """After a step on the CPU, ``model.to(device)`` leaves nothing on the CPU behind.

    ``meta`` stands in for a GPU (mixing it with CPU tensors raises). A move to meta makes new
    Parameter objects; a move from the CPU to CUDA keeps them and changes what they hold, which
    ``swap_module_params_on_conversion`` does for meta too.
    """
    model = _model()
    _step(model, grad=False)
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        weight = _first_msr(model).q_proj.weight
        model.to(META)
        assert (_first_msr(model).q_proj.weight is weight) == swap
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    step = _step(model, grad=False)
    assert {step.obs_logits.device, step.reward_logits.device, step.end_logits.device} == {META}
