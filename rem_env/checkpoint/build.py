"""The model of one whole save's bytes: every check before anything big is allocated.

``config.json`` and ``manifest.json`` are parsed and compared with each other, and the config
with the tensor shapes in the weights file's header (read without allocating the tensors), so
a config with huge sizes, or weights of another model, fail with a message instead of an
allocation error or a silently broken model.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from safetensors.torch import load
from torch.overrides import TorchFunctionMode

from rem_env.checkpoint.errors import ModelLoadError
from rem_env.checkpoint.files import (
    CONFIG_NAME,
    CONTEXT_BUFFERS,
    CONTEXTS_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
)
from rem_env.config import REMConfig
from rem_env.manifest import ProtocolManifest
from rem_env.model import REMModel

__all__ = ["build_model", "check_manifest_fits"]

_LAYER_NAME = re.compile(r"^world_model\.decoder\.layers\.([0-9]+)\.")
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_JSON_TYPES[type(None)] = "null"


def build_model(files: dict[str, bytes], where: str) -> REMModel:
    """The model of a whole save's files (by name); ``where`` names the folder in errors.

    Raises:
        ModelLoadError: Files that are not valid JSON or safetensors, a config that does not
            fit the manifest or the weights, start contexts that do not fit the config.
    """
    config = _parse(REMConfig.from_dict, _read_json(files, CONFIG_NAME, where), where, "config")
    manifest = _parse(
        ProtocolManifest.from_dict, _read_json(files, MANIFEST_NAME, where), where, "manifest"
    )
    check_manifest_fits(manifest, config, ModelLoadError, f"{where}: {MANIFEST_NAME}")
    weight_shapes = _header_shapes(files, WEIGHTS_NAME, where)
    context_shapes = _header_shapes(files, CONTEXTS_NAME, where)
    if set(context_shapes) != {"tokens", "actions"} or len(context_shapes["tokens"]) != 3:
        raise ModelLoadError(
            f"{where}: {CONTEXTS_NAME} must hold 'tokens' (N, C, K) and 'actions' (N, C-1), "
            f"got {context_shapes}"
        )
    _check_weights_fit(_expected_shapes(config, weight_shapes, where), weight_shapes, where)
    weights = _read_safetensors(files, WEIGHTS_NAME, where)
    contexts = _read_safetensors(files, CONTEXTS_NAME, where)
    with _NoRandomInit():  # every value comes from the files
        model = REMModel(config, num_start_contexts=max(1, contexts["tokens"].shape[0]))
    model.load_state_dict(weights, strict=False)  # complete: _check_weights_fit
    try:
        model.set_start_contexts(contexts["tokens"], contexts["actions"])
    except ValueError as err:
        raise ModelLoadError(f"{where}: {CONTEXTS_NAME} does not fit config.json: {err}") from err
    model.manifest = manifest
    return model


def check_manifest_fits(
    manifest: ProtocolManifest, config: REMConfig, error: type[Exception], where: str
) -> None:
    """Raises ``error`` if ``manifest`` names another game or action count than ``config``."""
    if manifest.game and config.game and manifest.game != config.game:
        raise error(f"{where}: game {manifest.game!r} but the config says {config.game!r}")
    protocol = manifest.protocol
    if protocol is not None and protocol.num_actions != config.num_actions:
        raise error(
            f"{where}: {protocol.num_actions} actions but the config has {config.num_actions}"
        )


def _read_json(files: dict[str, bytes], name: str, where: str) -> Any:
    try:
        data = json.loads(files[name].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{where}: {name} is not valid JSON ({err})") from err
    if not isinstance(data, dict):
        what = "the REMConfig" if name == CONFIG_NAME else "the ProtocolManifest"
        raise ModelLoadError(
            f"{where}: {name} must hold a JSON object ({what}), not a JSON "
            f"{_JSON_TYPES.get(type(data), type(data).__name__)}"
        )
    return data


def _parse(parse: Any, data: Any, where: str, what: str) -> Any:
    try:
        return parse(data)
    except (ValueError, TypeError) as err:
        raise ModelLoadError(f"{where}: {what}.json cannot be used: {err}") from err


def _corrupted(name: str, where: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{where}: {name} is corrupted or truncated ({err}); download it again "
        "(`hf download ... --force-download`) or save the model again"
    )


def _header_shapes(files: dict[str, bytes], name: str, where: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header alone (nothing is allocated)."""
    data = files[name]
    try:
        if len(data) < 8:
            raise ValueError(f"{len(data)} bytes, too short for a safetensors header")
        size = int.from_bytes(data[:8], "little")
        if size > len(data) - 8:
            raise ValueError(f"a header of {size} bytes in a file of {len(data)}")
        header = json.loads(data[8 : 8 + size])
        return {
            key: tuple(int(d) for d in entry["shape"])
            for key, entry in header.items()
            if key != "__metadata__"
        }
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise _corrupted(name, where, err) from err


def _read_safetensors(files: dict[str, bytes], name: str, where: str) -> dict[str, torch.Tensor]:
    try:
        return load(files[name])
    except Exception as err:  # safetensors raises its own error types
        raise _corrupted(name, where, err) from err


class _NoRandomInit(TorchFunctionMode):
    """Builds a model without drawing its random initial values (they are loaded over).

    Random fills (``nn.init.normal_`` and kin, ``torch.randint``) are skipped: on the meta
    device some of them import torch's compiler stack (seconds, once per process), and on the
    CPU they only cost time. The tensors keep their shapes; their values are undefined.
    """

    _FILLS = frozenset(
        {
            "normal_",
            "uniform_",
            "trunc_normal_",
            "xavier_normal_",
            "xavier_uniform_",
            "kaiming_normal_",
            "kaiming_uniform_",
            "orthogonal_",
        }
    )

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self._FILLS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor):
                return tensor
        if func is torch.randint:
            size = kwargs["size"] if "size" in kwargs else args[-1]
            return torch.empty(size, dtype=kwargs.get("dtype") or torch.long)
        return func(*args, **kwargs)


def _expected_shapes(
    config: REMConfig, found: dict[str, tuple[int, ...]], where: str
) -> dict[str, tuple[int, ...]]:
    """The weight shapes ``config`` asks for, from a model built on the meta device (no memory).

    A config with many more layers than the weights hold is refused before even that (building
    a million layers takes long, even on the meta device).
    """
    layers = {int(match[1]) for name in found if (match := _LAYER_NAME.match(name))}
    wanted = config.world_model.num_layers
    if layers and wanted > len(layers):
        raise ModelLoadError(
            f"{where}: the weights do not match config.json (missing layers: config.json asks "
            f"for {wanted} world-model layers, {WEIGHTS_NAME} holds {len(layers)}); the config "
            "and weights come from different models"
        )
    with torch.device("meta"), _NoRandomInit():
        meta = REMModel(config, num_start_contexts=1)
    return {
        name: tuple(tensor.shape)
        for name, tensor in meta.state_dict().items()
        if name not in CONTEXT_BUFFERS
    }


def _check_weights_fit(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str
) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{name}: {found[name]} in {WEIGHTS_NAME}, {shape} by config"
        for name, shape in expected.items()
        if name in found and found[name] != shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise ModelLoadError(
            f"{where}: the weights do not match config.json ({', '.join(parts)}); the config "
            "and weights come from different models"
        )
