"""The 1-D toy problem of Dumoulin et al. §4 (Table 1), shared by the reproductions.

p* is eq. 10 on [−10, 10]; π_pre is the energy MLP (4 hidden layers of 64, tanh) pretrained by
regression to log N_trunc(0, 5); pairs are drawn from π_pre.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

import pbde
from pbde import densities

LOW, HIGH = -10.0, 10.0


@dataclass
class TrainingSettings:
    """The paper's training settings for the 1-D toy (Table 1, §3–4), shared by the experiments.

    The learning rate is Table 1's 5e-4.
    """

    pairs: int = 2**15
    steps: int = 8192
    lr: float = 5e-4
    batch_size: int | None = None
    grid_size: int = 2**16
    pretrain_steps: int = 2000
    pretrain_lr: float = 3e-3
    seed: int = 0
    device: str = "cpu"


def paper_p_star() -> densities.TruncatedNormalMixture:
    """p* of Dumoulin et al., eq. 10: 0.4·N_trunc(−2.5, 0.25) + 0.6·N_trunc(2.5, 1) on [−10, 10]."""
    return densities.TruncatedNormalMixture(
        [-2.5, 2.5], [0.25, 1.0], [0.4, 0.6], low=LOW, high=HIGH
    )


def annotator_components() -> tuple[densities.TruncatedNormalMixture, ...]:
    """The two annotators of §5 (eq. 25 with p*_1 = N_trunc(−2.5, 0.25), p*_2 = N_trunc(2.5, 1),
    weights 0.4 and 0.6)."""
    return (
        densities.TruncatedNormalMixture([-2.5], [0.25], low=LOW, high=HIGH),
        densities.TruncatedNormalMixture([2.5], [1.0], low=LOW, high=HIGH),
    )


ANNOTATOR_WEIGHTS = (0.4, 0.6)


def pretrain_prior() -> densities.TruncatedNormalMixture:
    """The target of π_pre's pre-training: N_trunc(0, 5) on [−10, 10]."""
    return densities.TruncatedNormalMixture([0.0], [5.0], low=LOW, high=HIGH)


def pretrained_reference(
    *,
    grid_size: int,
    steps: int,
    lr: float = 3e-3,
    seed: int = 0,
    hidden: tuple[int, ...] = (64, 64, 64, 64),
    progress: bool | None = None,
) -> densities.EnergyModel:
    """π_pre: an :class:`~pbde.densities.EnergyModel` regressed onto log N_trunc(0, 5).

    Pre-trained once per set of arguments in a process (``pbde reproduce all`` shares it between
    experiments); each call returns a fresh copy.
    """
    key = (grid_size, steps, lr, seed, tuple(hidden))
    if key not in _PRETRAINED:
        torch.manual_seed(seed)
        pi_pre = densities.EnergyModel(LOW, HIGH, hidden=hidden, grid_size=grid_size)
        pi_pre.pretrain_to(pretrain_prior().log_prob, steps=steps, lr=lr, progress=progress)
        _PRETRAINED[key] = pi_pre
    torch.manual_seed(seed)  # callers go on from the same random state either way
    return copy.deepcopy(_PRETRAINED[key])


_PRETRAINED: dict = {}


def draw_pairs(pi_pre, pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` pairs (x_A, x_B), both items drawn independently from ``pi_pre``."""
    return pbde.sample_pairs(pi_pre, pairs, generator=torch.Generator().manual_seed(seed))


def evaluation_grid(points: int = 4001) -> pbde.Grid:
    """The grid on which experiments compare densities (KL and TV by the trapezoid rule)."""
    return pbde.Grid(LOW, HIGH, points)


def draw_uniform_pairs(grid: pbde.Grid, pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pairs`` pairs with both items uniform on the points of ``grid`` (the reward model's
    setting, "uniformly at random in [−10, 10]²", on the grid π_pre is normalized on)."""
    index = torch.randint(0, grid.size, (2, pairs), generator=torch.Generator().manual_seed(seed))
    return grid.points[index[0]], grid.points[index[1]]


def plot_points(points: int = 1001) -> torch.Tensor:
    """Where the figures draw the 1-D densities: ``points`` evenly spaced on [−7.5, 7.5] (the
    annotators and π_pre have negligible mass beyond), in float64."""
    return torch.linspace(-7.5, 7.5, points, dtype=torch.float64)
