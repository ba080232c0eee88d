"""``torch.compile`` readiness of the imagination step (the way to CUDA graphs on a GPU).

``fullgraph=True`` makes any graph break an error, so these tests fail if the step stops
tracing into one graph. They use the ``aot_eager`` backend: it traces and runs the captured
graph with PyTorch's own kernels, which checks the capture in seconds; inductor's code
generation is PyTorch's to test, not ours.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

from rem_env import REMConfig, REMModel
from rem_env.models.sampling import StepNoise

B = 3


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's notes on lru_cache-wrapped table builders
        yield
    torch._dynamo.reset()


def test_imagination_step_compiles_into_one_graph_with_equal_results() -> None:
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4)).eval()
    k = model.world_model.tokens_per_obs
    compiled = torch.compile(model.imagine_step, fullgraph=True, backend="aot_eager")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        eager_state = compiled_state = model.start_state(
            model.start_tokens[:B], model.start_actions[:B]
        )
        for _ in range(3):  # positions move: the compiled step must follow them
            uniforms = torch.rand(B, k + 2, generator=generator)
            noise = StepNoise(uniforms[:, :k], uniforms[:, k], uniforms[:, k + 1])
            actions = torch.randint(model.num_actions, (B,), generator=generator)
            eager, eager_state = model.imagine_step(eager_state, actions, noise=noise)
            step, compiled_state = compiled(compiled_state, actions, noise=noise)
            assert torch.equal(step.obs_tokens, eager.obs_tokens)
            torch.testing.assert_close(step.obs_logits, eager.obs_logits)
            torch.testing.assert_close(step.rewards, eager.rewards)
            assert compiled_state.position == eager_state.position
            for got, want in zip(compiled_state.retention, eager_state.retention, strict=True):
                torch.testing.assert_close(got, want)


def test_decoding_compiles_into_one_graph() -> None:
    torch.manual_seed(0)
    model = REMModel(REMConfig.preset("tiny", num_actions=4)).eval()
    tokens = model.start_tokens[:B, -1]
    compiled = torch.compile(model.decode, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(tokens, check_values=False), model.decode(tokens, check_values=False)
        )
