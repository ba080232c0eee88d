"""How a fidelity report reads on a page: a strip whose frames stay large, one paragraph a fact."""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from rem_env.fidelity import FidelityReport, save_strip_png


def test_strip_wraps_so_frames_stay_large(tmp_path) -> None:
    n, size = 11, 16
    real = np.zeros((n, size, size, 3), dtype=np.uint8)
    dream = np.zeros_like(real)
    for k in range(n):
        real[k, ..., 0] = 10 * k + 5  # red codes the step of the real frame
        dream[k, ..., 1] = 10 * k + 5  # green the step of the dreamed one
    path = tmp_path / "strip.png"
    save_strip_png({"real": real, "dream": dream}, path, scale=1, per_row=4)
    picture = np.asarray(Image.open(path))
    # 3 blocks of (real row, dream row), 4 frames a row, 2 px between frames, 8 between blocks
    assert picture.shape[:2] == (3 * (2 * size + 2) + 2 * 8, 4 * (size + 2) - 2)
    for k in range(n):
        x = (k % 4) * (size + 2)
        y = (k // 4) * (2 * size + 2 + 8)
        assert picture[y + 3, x + 3, 0] == 10 * k + 5 and picture[y + 3, x + 3, 1] == 0
        below = y + size + 2 + 3
        assert picture[below, x + 3, 1] == 10 * k + 5 and picture[below, x + 3, 0] == 0


def test_short_strip_is_one_block(tmp_path) -> None:
    frames = np.full((3, 8, 8, 3), 200, dtype=np.uint8)
    path = tmp_path / "strip.png"
    save_strip_png({"real": frames, "dream": frames}, path, scale=2, per_row=4)
    assert Image.open(path).size == (2 * (3 * 10 - 2), 2 * (2 * 8 + 2))


def test_summary_sentences_are_separate_paragraphs() -> None:
    report = FidelityReport(
        horizon=2, token_accuracy=[0.5, 0.4], psnr=[30.0, 29.0], compared=[3, 3],
        tokenizer_psnr=32.0, reward_precision=0.5, reward_recall=0.25, real_rewards=4,
        end_precision=None, end_recall=0.0, real_ends=1, rollouts=3, episodes=1,
        real_steps=9, temperature=1.0, seed=0, still_token_flips=0.2, moving_patches=0.05,
        dreamed_rewards=2, dreamed_ends=0,
    )  # fmt: skip
    assert "(4 real rewards, 2 dreamed)" in report.summary_table()
    assert "(1 real ends, 0 dreamed)" in report.summary_table()
    lines = report.summary_table().splitlines()
    text = [i for i, line in enumerate(lines) if line and not line.startswith("|")]
    assert len(text) == 3  # the ceiling, the flips, the events
    for a, b in itertools.pairwise(text):
        assert b - a == 2 and lines[a + 1] == "", "markdown would merge them into one paragraph"
