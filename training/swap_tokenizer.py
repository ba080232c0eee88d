"""Put a refitted patch tokenizer under a trained world model (not in REM).

A patch tokenizer refitted with more codes (``python -m rem_train.fit_patch_tokenizer
--vocab-size 1024``) has tokens the world model never saw, and training a world model anew
costs hours here. This tool starts one from the old model instead: each new code is a *child*
of the old code nearest to it (the L2 distance the tokenizer encodes with), and every weight
that is indexed by code is carried over from its parent:

* the embeddings of the codes (the world model's and the event window's): the parent's row,
  plus the child's pixels' difference from the parent's mapped by the least-squares linear map
  from the old codes' pixels to their embeddings, so that a child that looks like its parent
  starts where the parent is and one that differs (a ball beside a paddle) starts apart;
* the output rows over codes (the RetNet's head and the frame conv's): the parent's row, and
  the logits (their sum) less ``log(children of the parent)``, so that the children of a code
  share what the old model gave the parent.

Every other weight is copied. With the same codes in another order the new model gives the old
one's logits in that order; a frame conv or event window trained on from it learns the new
codes apart. The start contexts are the new tokenizer's (a fit's export plays them from the
same games). An actor-critic in the old folder, which reads frames, is kept.

Example:
    python -m rem_train.swap_tokenizer --model runs/r3fc2/export \\
        --tokenizer runs/p1024r3/export --out runs/r3swap
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path

import torch
from torch import Tensor

from rem_env.actor_critic_files import actor_critic_file, load_actor_critic
from rem_env.model import REMModel

from .warm_start import export_with_lineage, lineage_of

# world-model weights whose rows are the codes (the rest of each one's rows follow the codes)
EMBEDDINGS = ("embedding.weight", "event_window.token_embedding.weight")
OUTPUTS = ("frame_conv.out", "frame_conv.completion_out")


class SwapError(ValueError):
    """The two models cannot be joined (another grid, or a tokenizer that is not a patch one)."""


def parents(new_codebook: Tensor, old_codebook: Tensor) -> Tensor:
    """(V_new,) index of the old code nearest (L2) to each new code.

    Example:
        >>> old = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> parents(torch.tensor([[0.9, 1.0], [0.1, 0.0], [0.0, 0.2]]), old).tolist()
        [1, 0, 0]
    """
    return torch.cdist(new_codebook.double(), old_codebook.double()).argmin(dim=1)


def swap_tokenizer(model: REMModel, tokenizer: REMModel) -> REMModel:
    """``model``'s world model on ``tokenizer``'s patch tokenizer (see the module docstring).

    Args:
        model: The trained model (any world model over a patch tokenizer).
        tokenizer: A model whose patch tokenizer has the same grid (image, patch size, row
            offset, colours) and any number of codes; its start contexts are taken too.

    Returns:
        A new model in evaluation mode, in ``model``'s dtype.

    Raises:
        SwapError: If either tokenizer is not a patch tokenizer or the grids differ.
    """
    old_tok, new_tok = model.config.tokenizer, tokenizer.config.tokenizer
    if old_tok.kind != "patch" or new_tok.kind != "patch":
        raise SwapError(
            f"only patch tokenizers can be swapped, got {old_tok.kind!r} and {new_tok.kind!r}"
        )
    grid = ("image_size", "in_channels", "patch_size", "row_offset")
    differ = [f for f in grid if getattr(old_tok, f) != getattr(new_tok, f)]
    if differ:
        pairs = ", ".join(f"{f} {getattr(old_tok, f)} vs {getattr(new_tok, f)}" for f in differ)
        raise SwapError(f"the tokenizers' grids differ ({pairs}): refit with the model's grid")
    config = dataclasses.replace(model.config, tokenizer=new_tok)
    swapped = REMModel(config, num_start_contexts=len(tokenizer.start_tokens))
    dtype = next(model.parameters()).dtype
    swapped.to(dtype)
    swapped.tokenizer.load_state_dict(tokenizer.tokenizer.state_dict())
    swapped.set_start_contexts(tokenizer.start_tokens, tokenizer.start_actions)
    swapped.manifest = model.manifest  # the same game and protocol

    old_codes = model.tokenizer.codebook.detach().double()  # (V_old, C*p*p)
    new_codes = swapped.tokenizer.codebook.detach().double()  # (V_new, C*p*p)
    parent = parents(new_codes, old_codes)
    children = torch.bincount(parent, minlength=len(old_codes)).double()  # (V_old,)
    share = -torch.log(children[parent].clamp(min=1))  # (V_new,) each child's share of the parent
    offset = new_codes - old_codes[parent]  # (V_new, C*p*p)
    centred = old_codes - old_codes.mean(0)

    def embedded(rows: Tensor) -> Tensor:
        # (V_old, D) code rows -> (V_new, D): the parent's, moved by the pixel offset's image
        fit = torch.linalg.lstsq(centred, rows.double() - rows.double().mean(0)).solution
        return rows.double()[parent] + offset @ fit

    old_state = model.world_model.state_dict()
    state = {}
    v_old = len(old_codes)
    out_keys = {f"{name}.{part}" for name in OUTPUTS for part in ("weight", "bias")}
    head = len(model.world_model.head_obs) - 1  # the head's output layer
    out_keys |= {f"head_obs.{head}.weight", f"head_obs.{head}.bias"}
    # the logits of a next token are the sum of the head's and the frame conv's (and its
    # completion's): one bias takes the share
    shared = "frame_conv.out.bias"
    if shared not in old_state:
        shared = f"head_obs.{head}.bias"
    for key, value in old_state.items():
        if key in EMBEDDINGS:  # codes first, then (the world model's) actions and more
            value = torch.cat([embedded(value[:v_old]), value[v_old:].double()])
        elif key in out_keys:
            value = value.double()[parent] + (share if key == shared else 0.0)
        state[key] = value.to(dtype)
    try:
        swapped.world_model.load_state_dict(state)
    except RuntimeError as err:
        raise SwapError(f"a weight indexed by code is not carried over: {err}") from err
    return swapped.eval()


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m rem_train.swap_tokenizer``."""
    p = argparse.ArgumentParser(
        prog="python -m rem_train.swap_tokenizer",
        description="Put a refitted patch tokenizer under a trained world model: each new code "
        "starts from the weights of the old code nearest to it (not in REM).",
    )
    p.add_argument("--model", required=True, help="model folder whose world model is kept")
    p.add_argument(
        "--tokenizer",
        required=True,
        help="model folder of the new patch tokenizer (e.g. a fit_patch_tokenizer export)",
    )
    p.add_argument("--out", required=True, help="folder of the new model")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    model = REMModel.from_pretrained(args.model)
    tokenizer = REMModel.from_pretrained(args.tokenizer)
    try:
        swapped = swap_tokenizer(model, tokenizer)
    except SwapError as err:
        parser().error(str(err))
    actor_critic = None
    if actor_critic_file(args.model) is not None:
        actor_critic = load_actor_critic(args.model)
    codes = parents(swapped.tokenizer.codebook.detach(), model.tokenizer.codebook.detach())
    families = torch.bincount(codes, minlength=model.config.tokenizer.vocab_size)
    old_v, new_v = model.config.tokenizer.vocab_size, swapped.config.tokenizer.vocab_size
    record = {
        "command": shlex.join(["python", "-m", "rem_train.swap_tokenizer", *argv]),
        "preset": f"tokenizer swapped ({old_v} -> {new_v} codes)",
    }
    # the lineage: the model's, then the new tokenizer's (its fit), then this swap
    fit = lineage_of(Path(args.tokenizer))
    folder = export_with_lineage(swapped, actor_critic, Path(args.out), args.model, record, fit)
    print(
        f"{folder}: {new_v} codes from {old_v}; {int((families > 1).sum())} old codes have "
        f"more than one child (at most {int(families.max())}), {int((families == 0).sum())} none"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
