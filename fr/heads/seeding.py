"""Seed mixing for the heads' random streams (weight init, class sampling, per-step margin draws)."""
from __future__ import annotations

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Fold integers into one 63-bit seed (splitmix64 finaliser), so neighbouring tuples give unrelated seeds."""
    state = 0
    for value in values:
        z = (state ^ (value & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        state = z ^ (z >> 31)
    return state >> 1
