"""Model folders under concurrent saves, corruption, crashes and hostile configs.

A load must see one whole save or fail with a clear :class:`ModelLoadError`; a save must not
leave hidden leftovers behind after a crash; a config must be checked against the weights'
shapes before anything is allocated.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hang_guard import HANG_GUARD_S
from safetensors.torch import load_file

import rem_env.checkpoint.folder_swap as folder_swap
import rem_env.checkpoint.load as checkpoint_load
from rem_env import REMModel
from rem_env.hub import (
    CONFIG_NAME,
    CONTEXTS_NAME,
    MANIFEST_NAME,
    WEIGHTS_NAME,
    ModelChangedError,
    ModelLoadError,
    ModelNotCachedError,
    ModelNotFoundError,
    bundled_model_folder,
    load_pretrained,
    save_pretrained,
)
from rem_env.manifest import Evaluation, ProtocolManifest

# Model ``k`` carries ``k`` in every file: config (rope_base), weights (a bias), start contexts
# (token values) and manifest (evaluation.episodes). The writer process builds the same models.
MARKED_MODELS = """
import dataclasses
import torch
from rem_env import REMConfig, REMModel
from rem_env.manifest import Evaluation, ProtocolManifest

def marked(k):
    torch.manual_seed(k)
    config = REMConfig.preset("tiny", num_actions=4, game="Breakout")
    config = dataclasses.replace(
        config, world_model=dataclasses.replace(config.world_model, rope_base=10000.0 + k)
    )
    model = REMModel(config, num_start_contexts=3)
    with torch.no_grad():
        model.world_model.head_end[2].bias.fill_(float(k))
    model.set_start_contexts(
        torch.full((3, 2, 16), k + 1, dtype=torch.long), torch.zeros(3, 1, dtype=torch.long)
    )
    model.manifest = ProtocolManifest(game="Breakout", evaluation=Evaluation(episodes=k))
    return model
"""
namespace: dict[str, object] = {}
exec(MARKED_MODELS, namespace)
marked = namespace["marked"]


def markers(model: REMModel) -> tuple[int, int, int, int]:
    """(config, weights, contexts, manifest) markers of a loaded marked model."""
    assert model.manifest is not None
    return (
        round(model.config.world_model.rope_base - 10000.0),
        round(float(model.world_model.head_end[2].bias[0].detach())),
        int(model.start_tokens[0, 0, 0]) - 1,
        int(model.manifest.evaluation.episodes or 0),
    )


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_pretrained(marked(0), tmp_path / "m")  # type: ignore[operator]


# --- concurrent saves ---------------------------------------------------------------------

WRITER = """
import os, sys
import rem_env.checkpoint.folder_swap
from rem_env.hub import save_pretrained
folder, stop, exchange = sys.argv[1], sys.argv[2], sys.argv[3] == "True"
if not exchange:  # the two-rename fallback of systems that cannot swap two folders
    rem_env.checkpoint.folder_swap._exchange = lambda a, b: False
models = [marked(0), marked(1)]
save_pretrained(models[0], folder)
print("ready", flush=True)
saves = 0
while not os.path.exists(stop) and saves < 100_000:
    save_pretrained(models[saves % 2], folder)
    saves += 1
print(saves, flush=True)
"""


@pytest.mark.parametrize("exchange", [True, False], ids=["swap", "two-renames"])
def test_loads_during_saves_see_one_whole_save_or_a_clear_error(
    tmp_path: Path, exchange: bool
) -> None:
    folder, stop = tmp_path / "m", tmp_path / "stop"
    loads = 100
    writer = subprocess.Popen(
        [sys.executable, "-c", MARKED_MODELS + WRITER, str(folder), str(stop), str(exchange)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[int, int] = {0: 0, 1: 0}
    torn, other, changed = [], [], 0
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        for _ in range(loads):
            try:
                found = markers(load_pretrained(folder))
            except ModelChangedError:
                changed += 1
                continue
            except Exception as err:  # anything else is a failure, collected
                other.append(f"{type(err).__name__}: {err}")
                continue
            if len(set(found)) != 1:
                torn.append(found)
            else:
                seen[found[0]] += 1
    finally:
        stop.touch()
        try:
            out, err = writer.communicate(timeout=HANG_GUARD_S)
        except subprocess.TimeoutExpired:
            writer.kill()
            out, err = writer.communicate()
    assert writer.returncode == 0, err
    saves = int(out.split()[-1])
    assert not torn, f"{len(torn)} loads mixed files of different saves: {torn[:5]}"
    assert not other, f"{len(other)} loads failed unclearly: {other[:5]}"
    assert saves > 10 and seen[0] + seen[1] + changed == loads, (saves, seen, changed)
    assert seen[0] and seen[1], seen  # the race did happen: both models were loaded
    print(f"{saves} saves; loads: {seen} whole, {changed} ModelChangedError")


def test_a_torn_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read that mixes two saves (the weights of the next one) is retried, not used."""
    a = save_pretrained(marked(0), tmp_path / "a")  # type: ignore[operator]
    b = save_pretrained(marked(1), tmp_path / "b")  # type: ignore[operator]
    real_read = checkpoint_load._read_model_files
    reads = []

    def torn_once(folder: Path) -> dict[str, bytes | None] | None:
        reads.append(folder)
        files = real_read(folder)
        if len(reads) == 1 and files is not None:
            files[WEIGHTS_NAME] = (real_read(b) or {})[WEIGHTS_NAME]
        return files

    monkeypatch.setattr(checkpoint_load, "_read_model_files", torn_once)
    assert markers(load_pretrained(a)) == (0, 0, 0, 0)
    assert len(reads) == 2


def test_a_folder_that_keeps_changing_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read mixes two saves, and differently each time: ModelChangedError."""
    a = save_pretrained(marked(0), tmp_path / "a")  # type: ignore[operator]
    b = save_pretrained(marked(1), tmp_path / "b")  # type: ignore[operator]
    real_read = checkpoint_load._read_model_files
    reads = []

    def torn(folder: Path) -> dict[str, bytes | None]:
        first, second = (a, b) if len(reads) % 2 == 0 else (b, a)
        reads.append(folder)
        files = dict(real_read(first) or {})
        files[WEIGHTS_NAME] = (real_read(second) or {})[WEIGHTS_NAME]
        return files

    monkeypatch.setattr(checkpoint_load, "_read_model_files", torn)
    with pytest.raises(ModelChangedError, match="changed while it was read"):
        load_pretrained(a)
    assert len(reads) == checkpoint_load.READ_ATTEMPTS


# --- corruption ---------------------------------------------------------------------------


def _scramble_tensor_bytes(path: Path) -> None:
    """Keeps the safetensors header, replaces every tensor byte with random bytes."""
    data = path.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    path.write_bytes(data[:start] + os.urandom(len(data) - start))


def test_random_weights_behind_a_valid_header_are_caught(saved: Path) -> None:
    _scramble_tensor_bytes(saved / WEIGHTS_NAME)
    assert load_file(saved / WEIGHTS_NAME)  # still a readable safetensors file
    with pytest.raises(ModelLoadError, match=rf"{WEIGHTS_NAME} does not match manifest\.json"):
        load_pretrained(saved)


def test_a_changed_byte_of_the_start_contexts_is_caught(saved: Path) -> None:
    path = saved / CONTEXTS_NAME
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01  # token value k+1 -> another valid token: only the digest can tell
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=rf"{CONTEXTS_NAME} does not match manifest\.json"):
        load_pretrained(saved)


def test_manifest_records_sizes_and_sha256(saved: Path) -> None:
    manifest = json.loads((saved / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == sorted([CONFIG_NAME, WEIGHTS_NAME, CONTEXTS_NAME])
    for name, digest in manifest["files"].items():
        assert digest["size"] == (saved / name).stat().st_size
        assert len(digest["sha256"]) == 64
    loaded = load_pretrained(saved)
    assert loaded.manifest is not None and loaded.manifest.files is not None
    # the digests do not take part in ==: same protocol, same manifest
    assert loaded.manifest == ProtocolManifest(game="Breakout", evaluation=Evaluation(episodes=0))


def test_manifests_without_digests_still_load(saved: Path) -> None:
    path = saved / MANIFEST_NAME
    data = json.loads(path.read_text())
    del data["files"]
    data["format_version"] = 1
    path.write_text(json.dumps(data))
    assert markers(load_pretrained(saved)) == (0, 0, 0, 0)


def test_the_bundled_model_passes_its_own_digests() -> None:
    bundled = bundled_model_folder("Breakout")
    assert bundled is not None
    assert "files" in json.loads((bundled / MANIFEST_NAME).read_text())
    assert load_pretrained(bundled).config.game == "Breakout"  # digests checked while loading


# --- crashes during saves -----------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_save_removes_leftovers_of_dead_writers(saved: Path) -> None:
    parent = saved.parent
    host = folder_swap._host()
    dead = parent / f".m.saving-0123abcd-{_dead_pid()}@{host}"
    dead_old = parent / f".m.old-89abcdef-{_dead_pid()}@{host}"
    live = parent / f".m.saving-00000000-{os.getpid()}@{host}"  # a save in progress here
    ancient = parent / ".m.old-1a2b3c4d"  # written before leftovers carried a pid
    recent = parent / ".m.saving-k3j4h5g6"
    elsewhere = parent / ".m.saving-11111111-1@another-host"
    for path in (dead, dead_old, live, ancient, recent, elsewhere):
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(ancient, (two_hours_ago, two_hours_ago))
    other_model = parent / ".n.saving-22222222-1@another-host"  # another folder's: not ours
    other_model.mkdir()
    os.utime(other_model, (two_hours_ago, two_hours_ago))
    save_pretrained(marked(1), saved)  # type: ignore[operator]
    assert sorted(p.name for p in parent.iterdir()) == sorted(
        ["m", live.name, recent.name, elsewhere.name, other_model.name]
    )


KILLED_WRITER = """
import sys
from rem_env.hub import save_pretrained
models = [marked(0), marked(1)]
print("ready", flush=True)
for i in range(100_000):
    save_pretrained(models[i % 2], sys.argv[1])
"""


def test_kill_9_during_saves_leaves_nothing_behind_after_the_next_save(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    for attempt in range(4):
        writer = subprocess.Popen(
            [sys.executable, "-c", MARKED_MODELS + KILLED_WRITER, str(folder)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        while not folder.exists():
            time.sleep(0.01)
        time.sleep(0.03 * attempt)  # somewhere inside a save
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    save_pretrained(marked(0), folder)  # type: ignore[operator]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    assert markers(load_pretrained(folder)) == (0, 0, 0, 0)


# --- hostile or wrong configs -------------------------------------------------------------


def _edit_config(folder: Path, **world_model: object) -> None:
    path = folder / CONFIG_NAME
    data = json.loads(path.read_text())
    data["world_model"].update(world_model)
    path.write_text(json.dumps(data))


LIMITED_LOAD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
from rem_env.hub import ModelLoadError, load_pretrained
try:
    load_pretrained(sys.argv[1])
except ModelLoadError as err:
    print("ModelLoadError:", err)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS as a memory guard is Linux's")
@pytest.mark.parametrize(
    "sizes",
    [
        {"ffn_dim": 2**28},  # 2 x 32 GiB of feed-forward weights per layer
        {"num_layers": 1_000_000},  # a million layers: slow to build even when they are small
    ],
)
def test_a_huge_config_is_refused_before_building_the_model(
    saved: Path, sizes: dict[str, int]
) -> None:
    _edit_config(saved, **sizes)
    result = subprocess.run(
        [sys.executable, "-c", LIMITED_LOAD, str(saved)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("ModelLoadError:"), result.stdout
    assert "do not match config.json" in result.stdout


def test_the_shapes_are_compared_before_anything_is_allocated(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _edit_config(saved, ffn_dim=128)
    built = []
    real_init = REMModel.__init__

    def spy(self: REMModel, *args: object, **kwargs: object) -> None:
        built.append(torch.empty(0).device.type)  # the default device the model is built on
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(REMModel, "__init__", spy)
    with pytest.raises(ModelLoadError, match=r"shape mismatch.*linear1\.weight: \(64, 32\)"):
        load_pretrained(saved)
    assert built == ["meta"]


@pytest.mark.parametrize("content", ["[1, 2, 3]", '"tiny"', "null"])
def test_a_config_that_is_not_a_json_object(saved: Path, content: str) -> None:
    (saved / CONFIG_NAME).write_text(content)
    with pytest.raises(ModelLoadError, match=r"config\.json must hold a JSON object"):
        load_pretrained(saved)


# --- where the model is -------------------------------------------------------------------


def test_a_missing_relative_folder_is_reported_as_a_folder_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotCachedError) as info:
        load_pretrained("models/smoke", local_files_only=True)
    message = str(info.value)
    assert message.startswith(f"there is no folder 'models/smoke' ({tmp_path / 'models/smoke'})")
    assert "tried as a Hub repo id" in message and "is not cached" in message
    with pytest.raises(ModelNotFoundError, match="no model folder at 'models/smoke'"):
        load_pretrained(Path("models/smoke"))  # a path is never taken for a repo id


def test_an_interrupted_replacement_is_explained(saved: Path) -> None:
    """Killed between the two renames of the fallback path: the model is in ``.m.old-*``."""
    old = saved.with_name(f".m.old-0123abcd-{_dead_pid()}@{folder_swap._host()}")
    saved.rename(old)
    with pytest.raises(ModelNotFoundError, match=f"the previous model is in '{old}'"):
        load_pretrained(saved)


def test_a_replacement_still_in_progress_is_not_called_interrupted(saved: Path) -> None:
    """The writer of ``.m.old-*`` still runs (here: this process) but has not put the new folder
    in place while the load waited (a busy machine): a retryable ModelChangedError, not a claim
    that the save was interrupted (seen once in a full suite run under load)."""
    old = saved.with_name(f".m.old-0123abcd-{os.getpid()}@{folder_swap._host()}")
    saved.rename(old)
    with pytest.raises(ModelChangedError, match="a save is replacing it") as raised:
        load_pretrained(saved)
    assert "interrupted" not in str(raised.value)


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_a_model_swaps_it_whole(
    saved: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    if not exchange:
        monkeypatch.setattr(folder_swap, "_exchange", lambda a, b: False)
    save_pretrained(marked(1), saved)  # type: ignore[operator]
    assert markers(load_pretrained(saved)) == (1, 1, 1, 1)
    assert [p.name for p in saved.parent.iterdir()] == ["m"]
