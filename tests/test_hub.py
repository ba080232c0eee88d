"""Saving, loading and publishing REM models: folders, the fake Hub (tests/hub_server.py), errors.

Hub tests run huggingface_hub's real download code against the fake Hub that tests/conftest.py
points ``HF_ENDPOINT`` at; the offline test runs in a subprocess with ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from hang_guard import HANG_GUARD_S
from safetensors.torch import load_file, save_file

import rem_env.checkpoint.folder_swap as folder_swap
import rem_env.checkpoint.save as checkpoint_save
import rem_env.hub as hub
from rem_env import DreamVectorEnv, REMConfig, REMModel
from rem_env.hub import (
    ModelLoadError,
    ModelNotCachedError,
    ModelNotFoundError,
    NoDefaultModelError,
    ProtocolMismatchError,
    ProtocolWarning,
    load_model,
    resolve_default_model,
)
from rem_env.manifest import (
    AtariProtocol,
    Evaluation,
    ProtocolManifest,
    SoftwareVersions,
    TrainingBudget,
)


def tiny_model(seed: int = 0, game: str = "Breakout", contexts: int = 5) -> REMModel:
    torch.manual_seed(seed)
    return REMModel(REMConfig.preset("tiny", num_actions=4, game=game), contexts).eval()


@pytest.fixture(scope="module")
def model() -> REMModel:
    return tiny_model()


@pytest.fixture
def saved(model: REMModel, tmp_path: Path) -> Path:
    return Path(model.save_pretrained(tmp_path / "breakout"))


def assert_same_model(a: REMModel, b: REMModel) -> None:
    assert a.config == b.config
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert torch.equal(sa[name], sb[name]), name


def dream(model: REMModel, seed: int = 7, steps: int = 3) -> list[torch.Tensor]:
    out = []
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        state = model.start_state(model.start_tokens, model.start_actions)
        actions = torch.arange(model.num_start_contexts) % model.num_actions
        for _ in range(steps):
            step, state = model.imagine_step(state, actions, generator=generator)
            out += [step.obs_tokens, step.rewards, step.ends, step.obs_logits]
    return out


# --- folders ------------------------------------------------------------------------------


def test_round_trip_is_bit_identical_and_dreams_the_same(model: REMModel, saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == sorted([*hub.MODEL_FILES, "README.md"])
    loaded = REMModel.from_pretrained(saved)
    assert not loaded.training
    assert_same_model(model, loaded)
    assert loaded.num_start_contexts == 5
    assert loaded.manifest == hub.default_manifest(model)
    for x, y in zip(dream(model), dream(loaded), strict=True):
        assert torch.equal(x, y)
    # the start contexts live in their own file, the weights file has none
    assert "start_tokens" not in load_file(saved / hub.WEIGHTS_NAME)
    # a loaded model saves again with its manifest
    again = Path(loaded.save_pretrained(saved.parent / "again"))
    assert json.loads((again / "manifest.json").read_text()) == loaded.manifest.to_dict()


def test_manifest_and_model_card(model: REMModel, tmp_path: Path) -> None:
    protocol = AtariProtocol.atari100k("Breakout", 4, ("NOOP", "FIRE", "RIGHT", "LEFT"))
    manifest = ProtocolManifest(
        "Breakout",
        protocol,
        SoftwareVersions(ale_py="0.11.0", gymnasium="1.1.1", torch="2.8.0", rem_env="0.1.0"),
        TrainingBudget(env_steps=100_000, epochs=600),
        Evaluation(mean_return=12.5, episodes=100),
    )
    folder = Path(model.save_pretrained(tmp_path / "m", manifest=manifest, repo_id="me/rem-b"))
    data = json.loads((folder / "manifest.json").read_text())
    assert data["protocol"]["env_id"] == "BreakoutNoFrameskip-v4"
    assert data["protocol"]["frameskip"] == 4 and data["protocol"]["noop_max"] == 30
    assert data["protocol"]["repeat_action_probability"] == 0.0
    assert data["training"] == {"env_steps": 100_000, "epochs": 600}
    assert REMModel.from_pretrained(folder).manifest == manifest
    from huggingface_hub.repocard import metadata_load

    assert metadata_load(folder / "README.md") == {
        "library_name": "rem-env",
        "license": "mit",
        "tags": ["reinforcement-learning", "world-models", "atari", "rem", "Breakout"],
    }
    card = (folder / "README.md").read_text()
    assert "| real environment steps | 100000 |" in card
    assert "| dream fidelity | not measured |" in card
    assert 'model="me/rem-b"' in card
    with pytest.raises(ValueError, match="unknown keys"):
        ProtocolManifest.from_dict({**data, "colour": "blue"})
    with pytest.raises(ValueError, match="actions but the config has 4"):
        model.save_pretrained(
            tmp_path / "bad",
            manifest=ProtocolManifest("Breakout", dataclasses.replace(protocol, num_actions=6)),
        )


def test_save_replaces_an_existing_model_folder(saved: Path) -> None:
    other = tiny_model(seed=1)
    other.save_pretrained(saved)
    assert_same_model(other, REMModel.from_pretrained(saved))
    assert [p.name for p in saved.parent.iterdir()] == ["breakout"]  # no leftovers


def test_save_refuses_to_replace_a_folder_that_is_not_a_model(
    model: REMModel, tmp_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="does not hold a saved REM model"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("existing", [False, True])
def test_interrupted_save_leaves_no_broken_model(
    model: REMModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    target = tmp_path / "m"
    old = tiny_model(seed=3)
    if existing:
        old.save_pretrained(target)
    calls = []

    def crash_on_second_file(*args: object, **kwargs: object) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        save_file(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint_save, "save_file", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(target)
    assert [p.name for p in tmp_path.iterdir()] == (["m"] if existing else [])
    if existing:
        assert_same_model(old, REMModel.from_pretrained(target))


def test_failed_rename_restores_the_old_folder(
    model: REMModel, saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two-rename fallback (where the OS cannot swap two folders in one step)."""
    before = REMModel.from_pretrained(saved)
    monkeypatch.setattr(folder_swap, "_exchange", lambda a, b: False)
    real_replace = os.replace
    calls = []

    def fail_second(src: str, dst: str) -> None:
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(folder_swap.os, "replace", fail_second)
    with pytest.raises(OSError, match="disk full"):
        tiny_model(seed=4).save_pretrained(saved)
    monkeypatch.undo()
    assert_same_model(before, REMModel.from_pretrained(saved))
    assert [p.name for p in saved.parent.iterdir()] == ["breakout"]


# --- bad input ----------------------------------------------------------------------------


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, leaf = key.split("__")
        node = data
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    path.write_text(json.dumps(data))


def test_missing_folder_file_and_not_a_model(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        REMModel.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        REMModel.from_pretrained("./nothing/here")
    with pytest.raises(ModelLoadError, match="is a file"):
        REMModel.from_pretrained(saved / "config.json")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.png").write_bytes(b"\x89PNG")
    with pytest.raises(ModelLoadError, match="is not an REM model"):
        REMModel.from_pretrained(other)
    (saved / hub.CONTEXTS_NAME).unlink()
    with pytest.raises(ModelNotFoundError, match=r"missing \['start_contexts.safetensors'\]"):
        REMModel.from_pretrained(saved)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("name", [hub.WEIGHTS_NAME, hub.CONTEXTS_NAME])
def test_corrupted_safetensors(saved: Path, damage: str, name: str) -> None:
    path = saved / name
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": b"\x17" * 64, "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ModelLoadError, match=f"{name} is corrupted or truncated"):
        REMModel.from_pretrained(saved)


def test_config_that_does_not_match_the_weights(saved: Path) -> None:
    edit_json(saved / "config.json", world_model__num_layers=3)
    with pytest.raises(ModelLoadError, match=r"do not match config.json \(missing"):
        REMModel.from_pretrained(saved)
    edit_json(saved / "config.json", world_model__num_layers=2, world_model__ffn_dim=128)
    with pytest.raises(ModelLoadError, match="shape mismatch"):
        REMModel.from_pretrained(saved)


def test_contexts_that_do_not_match_the_config(saved: Path) -> None:
    save_file(
        {"tokens": torch.full((2, 2, 16), 99), "actions": torch.zeros(2, 1, dtype=torch.long)},
        str(saved / hub.CONTEXTS_NAME),
    )
    with pytest.raises(ModelLoadError, match=r"does not fit config\.json"):
        REMModel.from_pretrained(saved)


def test_newer_format_versions_and_bad_json(saved: Path) -> None:
    edit_json(saved / "config.json", format_version=2)
    with pytest.raises(ModelLoadError, match="newer than this rem-env understands"):
        REMModel.from_pretrained(saved)
    edit_json(saved / "config.json", format_version=1)
    edit_json(saved / "manifest.json", format_version=7)
    with pytest.raises(ModelLoadError, match="manifest format_version 7 is newer"):
        REMModel.from_pretrained(saved)
    (saved / "manifest.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"manifest\.json is not valid JSON"):
        REMModel.from_pretrained(saved)


# --- protocol guard -----------------------------------------------------------------------


def save_with_ale(model: REMModel, folder: Path, ale_py: str) -> Path:
    game = model.config.game
    assert game is not None
    manifest = ProtocolManifest(
        game, AtariProtocol.atari100k(game, 4), SoftwareVersions(ale_py=ale_py)
    )
    return Path(model.save_pretrained(folder, manifest=manifest))


def test_known_bad_ale_py_for_paddle_games(model: REMModel, tmp_path: Path) -> None:
    folder = save_with_ale(model, tmp_path / "b", "0.10.1")
    with pytest.raises(ProtocolMismatchError, match=r"ale-py 0\.10\.1.*Breakout"):
        REMModel.from_pretrained(folder)
    with pytest.warns(ProtocolWarning, match="paddle handling"):
        loaded = REMModel.from_pretrained(folder, on_protocol_mismatch="warn")
    assert_same_model(model, loaded)
    # not a paddle game: the same ale-py is fine
    REMModel.from_pretrained(save_with_ale(tiny_model(game="Seaquest"), tmp_path / "s", "0.10.0"))
    REMModel.from_pretrained(save_with_ale(model, tmp_path / "ok", "0.10.2"))


def test_protocol_other_than_expected(saved: Path) -> None:
    expected = AtariProtocol.atari100k("Breakout", 4)
    REMModel.from_pretrained(saved, expected_protocol=expected)
    sticky = dataclasses.replace(expected, repeat_action_probability=0.25)
    with pytest.raises(ProtocolMismatchError, match=r"repeat_action_probability is 0\.0"):
        REMModel.from_pretrained(saved, expected_protocol=sticky)
    with pytest.raises(ValueError, match="on_protocol_mismatch"):
        REMModel.from_pretrained(saved, on_protocol_mismatch="maybe")  # type: ignore[arg-type]


# --- default registry and load_model ------------------------------------------------------


def test_default_model_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(hub.HUB_ORG_ENV, raising=False)
    with pytest.raises(NoDefaultModelError, match="rem-train --game Pong") as info:
        resolve_default_model("Pong")
    assert hub.HUB_ORG_ENV in str(info.value) and "model=" in str(info.value)
    monkeypatch.setenv(hub.HUB_ORG_ENV, "rem-org")
    assert resolve_default_model("MsPacman") == "rem-org/rem-mspacman"
    monkeypatch.setitem(hub.DEFAULT_MODELS, "MsPacman", "other/pacman")
    assert resolve_default_model("MsPacman") == "other/pacman"
    bundled = tmp_path / "weights" / "Pong"
    tiny_model(game="Pong").save_pretrained(bundled)
    monkeypatch.setattr(hub, "__file__", str(tmp_path / "hub.py"))
    assert resolve_default_model("Pong") == str(bundled)


def test_load_model_accepts_models_folders_and_repo_ids(model: REMModel, saved: Path) -> None:
    assert load_model(model) is model
    assert_same_model(model, load_model(str(saved)))
    assert_same_model(model, load_model(saved))
    with pytest.raises(ValueError, match="revision= applies to Hub repo ids"):
        load_model(model, revision="v1")
    with pytest.raises(ValueError, match="applies to Hub repo ids, not to folder"):
        load_model(saved, revision="v1")
    with pytest.raises(TypeError, match="got int"):
        load_model(3)  # type: ignore[arg-type]


def test_gym_make_and_make_vec_with_a_model_folder(model: REMModel, saved: Path) -> None:
    env = gym.make("REM-Breakout-v0", model=str(saved))
    env.reset(seed=0)
    env.step(0)
    assert_same_model(model, env.unwrapped.model)
    env.close()
    envs = gym.make_vec("REM-Breakout-v0", num_envs=3, model=saved)
    assert envs.reset(seed=0)[0].shape[0] == 3
    assert_same_model(model, envs.unwrapped.model)
    envs.close()


# --- Hub ----------------------------------------------------------------------------------


def test_download_by_repo_id_and_pinned_revision(fake_hub, saved: Path, tmp_path: Path) -> None:
    first = fake_hub.hub.commit("acme/rem-breakout", saved, tag="v1")
    second_model = tiny_model(seed=2)
    second = fake_hub.hub.commit(
        "acme/rem-breakout", Path(second_model.save_pretrained(tmp_path / "second"))
    )
    assert first != second
    assert_same_model(second_model, REMModel.from_pretrained("acme/rem-breakout"))
    v1 = REMModel.from_pretrained(saved)
    assert_same_model(v1, REMModel.from_pretrained("acme/rem-breakout", revision="v1"))
    assert_same_model(v1, REMModel.from_pretrained("acme/rem-breakout", revision=first))
    assert_same_model(second_model, load_model("acme/rem-breakout", revision=second))
    # the model card is not downloaded: only the files a load needs
    assert not any("README.md" in r for r in fake_hub.hub.requests)


def test_hub_errors(fake_hub, saved: Path) -> None:
    fake_hub.hub.commit("acme/rem-pong", saved)
    with pytest.raises(ModelNotFoundError, match="no Hub repo 'acme/nope'"):
        REMModel.from_pretrained("acme/nope")
    with pytest.raises(ModelNotFoundError, match="has no revision 'v9'"):
        REMModel.from_pretrained("acme/rem-pong", revision="v9")
    files = {p.name: p.read_bytes() for p in saved.iterdir() if p.name != hub.WEIGHTS_NAME}
    fake_hub.hub.commit("acme/half-upload", files)
    with pytest.raises(ModelNotFoundError, match=r"missing \['model.safetensors'\]"):
        REMModel.from_pretrained("acme/half-upload")
    fake_hub.hub.commit("acme/dataset", {"data.csv": b"a,b\n1,2\n"})
    with pytest.raises(ModelLoadError, match="is not an REM model"):
        REMModel.from_pretrained("acme/dataset")


def test_missing_file_maps_to_huggingface_hub_404(fake_hub, saved: Path) -> None:
    """The fake Hub's 404s are the real protocol: huggingface_hub raises its own errors."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    fake_hub.hub.commit("acme/raw", saved)
    assert (
        Path(hf_hub_download("acme/raw", "config.json")).read_bytes()
        == (saved / "config.json").read_bytes()
    )
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("acme/raw", "nope.bin")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("acme/raw", "config.json", revision="nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/none", "config.json")


def test_cache_is_reused_with_the_server_stopped(fake_hub, saved: Path) -> None:
    fake_hub.hub.commit("acme/cached", saved)
    online = REMModel.from_pretrained("acme/cached")
    sha = fake_hub.hub.repos["acme/cached"].refs["main"]
    assert fake_hub.hub.requests[f"GET /acme/cached/resolve/{sha}/model.safetensors"] == 1
    served = sum(fake_hub.hub.requests.values())
    fake_hub.stop()
    assert_same_model(online, REMModel.from_pretrained("acme/cached"))
    assert_same_model(online, REMModel.from_pretrained("acme/cached", revision=sha))
    assert_same_model(online, REMModel.from_pretrained("acme/cached", local_files_only=True))
    with pytest.raises(ModelNotCachedError, match="could not be reached") as info:
        REMModel.from_pretrained("acme/never-downloaded")
    assert "hf download acme/never-downloaded" in str(info.value)
    with pytest.raises(ModelNotCachedError, match="local_files_only=True"):
        REMModel.from_pretrained("acme/never-downloaded", local_files_only=True)
    assert sum(fake_hub.hub.requests.values()) == served  # nothing reached the server
    fake_hub.start()
    REMModel.from_pretrained("acme/cached")
    assert fake_hub.hub.requests[f"GET /acme/cached/resolve/{sha}/model.safetensors"] == 1


OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from rem_env import REMModel
    from rem_env.hub import ModelNotCachedError

    assert "huggingface_hub" not in sys.modules, "import rem_env must not import huggingface_hub"
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    model = REMModel.from_pretrained("acme/offline")
    result = {"sum": float(sum(p.detach().double().sum() for p in model.parameters()))}
    try:
        REMModel.from_pretrained("acme/offline", revision="v2")
    except ModelNotCachedError as err:
        result["error"] = str(err)
    print(json.dumps(result))
    """
)


def test_offline_uses_the_cache_and_explains_what_is_missing(fake_hub, saved: Path) -> None:
    fake_hub.hub.commit("acme/offline", saved)
    online = REMModel.from_pretrained("acme/offline")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    expected = float(sum(p.detach().double().sum() for p in online.parameters()))
    assert result["sum"] == expected
    message = result["error"]
    assert "is not cached" in message and "HF_HUB_OFFLINE=1 is set" in message
    assert "hf download acme/offline --revision v2" in message and "local folder" in message


def test_push_to_hub_uploads_a_loadable_folder(fake_hub, model: REMModel) -> None:
    """The real HfApi.create_repo + upload_folder protocol, against the fake Hub."""
    info = model.push_to_hub("me/rem-breakout", token="hf_test")
    files = fake_hub.hub.repos["me/rem-breakout"].commits[info.oid]
    assert sorted(files) == sorted([*hub.MODEL_FILES, "README.md"])
    assert b'model="me/rem-breakout"' in files["README.md"]
    assert_same_model(model, REMModel.from_pretrained("me/rem-breakout"))
    # pushing again to the existing repo makes a new commit on main
    newer = tiny_model(seed=5)
    again = newer.push_to_hub("me/rem-breakout", token="hf_test", commit_message="v2")
    assert again.oid != info.oid and fake_hub.hub.requests["POST /api/repos/create"] == 2
    assert_same_model(newer, REMModel.from_pretrained("me/rem-breakout"))
    assert_same_model(model, REMModel.from_pretrained("me/rem-breakout", revision=info.oid))


def test_gym_make_and_make_vec_with_a_repo_id(fake_hub, model: REMModel, saved: Path) -> None:
    fake_hub.hub.commit("acme/rem-gym", saved)
    env = gym.make("REM-Breakout-v0", model="acme/rem-gym")
    env.reset(seed=0)
    assert_same_model(model, env.unwrapped.model)
    env.close()
    envs = gym.make_vec("REM-Breakout-v0", num_envs=2, model="acme/rem-gym")
    assert envs.reset(seed=0)[0].shape[0] == 2
    assert_same_model(model, envs.unwrapped.model)
    envs.close()


def test_revision_reaches_gym_make_make_vec_and_dream_vector_env(
    fake_hub, model: REMModel, saved: Path, tmp_path: Path
) -> None:
    pinned = fake_hub.hub.commit("acme/rem-rev", saved, tag="v1")
    newer = tiny_model(seed=3)
    fake_hub.hub.commit("acme/rem-rev", Path(newer.save_pretrained(tmp_path / "newer")))
    env = gym.make("REM-Breakout-v0", model="acme/rem-rev", revision="v1")
    assert_same_model(model, env.unwrapped.model)
    env.close()
    envs = gym.make_vec("REM-Breakout-v0", num_envs=2, model="acme/rem-rev", revision=pinned)
    assert_same_model(model, envs.unwrapped.model)
    envs.close()
    assert_same_model(newer, DreamVectorEnv("acme/rem-rev", num_envs=2).model)
    assert_same_model(model, DreamVectorEnv("acme/rem-rev", num_envs=2, revision="v1").model)
    assert_same_model(model, DreamVectorEnv(saved, num_envs=1).model)
    with pytest.raises(gym.error.Error, match="acme/no-such-repo"):
        gym.make("REM-Breakout-v0", model="acme/no-such-repo")
