"""Counter-based per-env random streams (rem_env.noise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rem_env.noise import MAX_SEED, hash_uniforms, splitmix64


def test_splitmix64_matches_the_reference_on_64_bit_integers() -> None:
    def reference(x: int) -> int:
        mask = 2**64 - 1
        z = (x + 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    values = [0, 1, 2, 12345, 2**40 + 7, MAX_SEED, -1, -(2**63)]
    got = splitmix64(torch.tensor(values, dtype=torch.long)).tolist()
    expected = [reference(v % 2**64) for v in values]
    assert [g % 2**64 for g in got] == expected


def test_uniforms_are_in_range_and_uniform() -> None:
    seeds = torch.arange(2000, dtype=torch.long)
    u = hash_uniforms(seeds, torch.zeros_like(seeds), 50).flatten().numpy()  # 100k numbers
    assert u.dtype == np.float32
    assert u.min() >= 0.0 and u.max() < 1.0
    counts, _ = np.histogram(u, bins=20, range=(0.0, 1.0))
    expected = u.size / 20
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 60.0  # 19 dof: p ~ 1e-6
    assert abs(u.mean() - 0.5) < 0.005
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.02


def test_streams_do_not_depend_on_the_batch() -> None:
    seeds = torch.tensor([3, 99, 2**62, 7], dtype=torch.long)
    counters = torch.tensor([0, 5, 11, 2**33], dtype=torch.long)
    together = hash_uniforms(seeds, counters, 10)
    for i in range(4):
        alone = hash_uniforms(seeds[i : i + 1], counters[i : i + 1], 10)
        assert torch.equal(alone[0], together[i])
    reordered = hash_uniforms(seeds.flip(0), counters.flip(0), 10)
    assert torch.equal(reordered, together.flip(0))


def test_seeds_counters_and_slots_all_change_the_numbers() -> None:
    base = hash_uniforms(torch.tensor([1]), torch.tensor([0]), 8)
    assert not torch.equal(base, hash_uniforms(torch.tensor([2]), torch.tensor([0]), 8))
    assert not torch.equal(base, hash_uniforms(torch.tensor([1]), torch.tensor([1]), 8))
    assert len(set(base[0].tolist())) == 8
    # a stream's first slots do not depend on how many slots are drawn
    assert torch.equal(base[:, :3], hash_uniforms(torch.tensor([1]), torch.tensor([0]), 3))


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="seeds and counters"):
        hash_uniforms(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="num_slots"):
        hash_uniforms(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0)
