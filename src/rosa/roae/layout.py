"""Which head dimensions RoPE pairs and how fast each pair turns, measured from the model's own code.

Families disagree on the layout: most pair dimension ``i`` with ``i + d_rot/2`` ("rotate half"),
Cohere, GLM and others pair ``2i`` with ``2i + 1`` (interleaved), DeepSeek-V3 permutes an
interleaved input into the rotate-half order, partial-rotary families leave the last dimensions
alone. Instead of a table per family, the layer's own rotary function is applied to the basis
vectors of a head with the cos/sin its own rotary embedding produces for positions 0 and 1. Position 0
shows where each input dimension lands (a permutation, scaled by any attention scaling), position 1
the rotation that follows: its 2x2 blocks are the pairs, their angles the frequencies (after any
linear, dynamic, YaRN, Llama-3 or LongRoPE scaling, since those only change cos/sin).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rosa.errors import UnsupportedModelError


@dataclass(frozen=True)
class RotaryLayout:
    """The rotary geometry of the states one layer hands to attention.

    ``dim`` is the size of the last axis of the rotated states, ``pairs[i]`` the two dimensions pair
    ``i`` rotates (pairs ordered by their first dimension, so pair ``i`` is the spec's ``theta_i``),
    ``frequencies[i]`` its angle per position.
    """

    dim: int
    pairs: tuple[tuple[int, int], ...]
    frequencies: tuple[float, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def rotary_dim(self) -> int:
        return 2 * self.n_pairs

    @property
    def name(self) -> str:
        """``rotate_half`` (pair ``i`` is ``(i, i + h)`` for one offset ``h``), ``interleaved``
        (``(2i, 2i + 1)``), or ``other`` for any other pairing."""
        offset = self.pairs[0][1] - self.pairs[0][0]
        if all(pair == (i, i + offset) for i, pair in enumerate(self.pairs)):
            return "rotate_half"
        if all(pair == (2 * i, 2 * i + 1) for i, pair in enumerate(self.pairs)):
            return "interleaved"
        return "other"

    def frequency_rank(self) -> tuple[int, ...]:
        """Pair indices from lowest to highest frequency; ties go to the higher index."""
        return tuple(sorted(range(self.n_pairs), key=lambda i: (self.frequencies[i], -i)))

    def low_frequency_pairs(self, n_low: int) -> list[int]:
        """Indices of the ``n_low`` lowest-frequency pairs, ascending (standard RoPE: the last ``n_low``)."""
        return sorted(self.frequency_rank()[:n_low])

    def low_frequency_dims(self, n_low: int) -> list[int]:
        """The dimensions of those pairs, ascending; unrotated dimensions are never among them."""
        return sorted(d for i in self.low_frequency_pairs(n_low) for d in self.pairs[i])

    def dim_frequencies(self) -> list[float | None]:
        """Each dimension's frequency; ``None`` for dimensions RoPE leaves alone."""
        out: list[float | None] = [None] * self.dim
        for (a, b), frequency in zip(self.pairs, self.frequencies):
            out[a] = out[b] = frequency
        return out

    def to_dict(self) -> dict:
        return {"dim": self.dim, "layout": self.name, "pairs": [list(p) for p in self.pairs],
                "frequencies": [float(f"{f:.6g}") for f in self.frequencies]}


RotaryEmbedding = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def measure_layout(
    rotate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    dim: int,
    heads_axis: int,
    cos_sin_at: RotaryEmbedding,
    where: str,
) -> RotaryLayout:
    """Measure the layout of ``rotate(states, cos, sin)`` on ``dim``-wide heads.

    ``cos_sin_at(position)`` gives the rotary embedding's cos/sin for one position; ``where`` names
    the layer in errors. The basis vectors go in as ``dim`` heads of one token.
    """
    shape = [1, 1, 1, dim]
    shape[heads_axis] = dim

    def transform(position: int) -> torch.Tensor:
        cos, sin = cos_sin_at(position)
        basis = torch.eye(dim, dtype=torch.float64 if cos.dtype == torch.float64 else torch.float32, device=cos.device)
        out = rotate(basis.reshape(shape), cos, sin)
        if out.shape[-1] != dim:
            raise UnsupportedModelError(f"{where}: its rotary function changes the head size ({dim} -> {out.shape[-1]}).")
        return out.movedim(heads_axis, 0).reshape(dim, dim).double().cpu()  # row j: where basis vector j goes

    at_zero, at_one = transform(0), transform(1)
    nonzero = at_zero != 0
    if not bool((nonzero.sum(dim=1) == 1).all()) or len(set(nonzero.float().argmax(dim=1).tolist())) != dim:
        raise UnsupportedModelError(f"{where}: RoPE at position 0 is not a permutation of the head dimensions.")
    landing = nonzero.float().argmax(dim=1)
    rotation = torch.zeros(dim, dim, dtype=torch.float64)
    rotation[landing] = at_one / at_zero[torch.arange(dim), landing].unsqueeze(1)
    return _pairs_of(rotation, where)


def _pairs_of(rotation: torch.Tensor, where: str) -> RotaryLayout:
    """The 2x2 rotation blocks of ``rotation`` (rows: output dimensions) and their angles."""
    dim = rotation.shape[0]
    off_diagonal = (rotation != 0) & ~torch.eye(dim, dtype=torch.bool)
    pairs, frequencies = [], []
    for a in range(dim):
        partners = off_diagonal[a].nonzero().flatten().tolist()
        if not partners:
            continue
        if len(partners) != 1 or off_diagonal[partners[0]].nonzero().flatten().tolist() != [a]:
            raise UnsupportedModelError(f"{where}: RoPE mixes dimension {a} with {partners}, not with one partner.")
        b = partners[0]
        if b > a:
            pairs.append((a, b))
            frequencies.append(math.atan2(abs(float(rotation[a, b])), float(rotation[a, a])))
    if not pairs:
        raise UnsupportedModelError(f"{where}: its rotary function rotates no dimension.")
    return RotaryLayout(dim=dim, pairs=tuple(pairs), frequencies=tuple(frequencies))
