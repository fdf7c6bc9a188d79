"""The 5×100 ReLU MLP of the digits study, built from a small config dataclass.

The hidden layers live in ``model.hidden`` (a ``ModuleList`` of blocks) and the output layer in
``model.head``, so transfer variants can freeze, drop or unfreeze layers by index without
knowing the block internals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from mnistlab.errors import MnistlabError
from mnistlab.models import stack


@dataclass(frozen=True)
class MLPConfig:
    in_features: int = 784
    hidden: tuple[int, ...] = field(default=(100, 100, 100, 100, 100))
    n_classes: int = 5
    batch_norm: bool = False
    dropout: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MLPConfig:
        return cls(**{**d, "hidden": tuple(d["hidden"])})


class MLP(nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        blocks = []
        width = config.in_features
        for units in config.hidden:
            # Linear → [BN] → ReLU → [Dropout]: BN before the non-linearity, as Ioffe & Szegedy.
            layers: list[nn.Module] = [nn.Linear(width, units)]
            if config.batch_norm:
                layers.append(nn.BatchNorm1d(units))
            layers.append(nn.ReLU())
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            blocks.append(nn.Sequential(*layers))
            width = units
        self.hidden = nn.ModuleList(blocks)
        self.head = nn.Linear(width, config.n_classes)

    def features(self, x: torch.Tensor, n_layers: int | None = None) -> torch.Tensor:
        """Output of the first ``n_layers`` hidden blocks (all by default)."""
        x = x.flatten(1)
        for block in self.hidden[:n_layers]:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def xavier_init(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """Glorot-uniform weights and zero biases for every Linear layer (ReLU nets included,
    as the study prescribes, although He init is the textbook choice for ReLU)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)


def build_mlp(config: MLPConfig, seed: int) -> MLP:
    """A freshly initialised MLP; the same seed gives the same weights."""
    if config.dropout < 0 or config.dropout >= 1:
        raise MnistlabError(f"dropout must be in [0, 1), got {config.dropout}")
    model = MLP(config)
    xavier_init(model, torch.Generator().manual_seed(seed))
    return model


class StackedMLP:
    """K members of the MLP's top blocks ``first..`` plus the output layer, as one network.

    ``prefix`` names the block list in the solo state dict (``hidden`` for :class:`MLP`,
    ``stack`` for the transfer study's reused stacks); blocks below ``first`` are frozen and
    run outside (shared by every member). Blocks ``first..frozen-1`` are frozen too but each
    member's own (a source model per seed): they run inside, always as in evaluation — running
    batch-norm statistics, no dropout — as :class:`Reused` runs its frozen blocks. Per-member
    dropout rates come with the step's noise.
    """

    def __init__(self, config: MLPConfig, prefix: str = "hidden", first: int = 0, frozen: int = 0):
        self.config, self.prefix, self.first, self.frozen = config, prefix, first, frozen

    def decays(self, name: str) -> bool:
        """L2 on weight matrices only (not biases or batch-norm scales)."""
        return name == "head.weight" or (
            name.startswith(self.prefix) and name.endswith(".0.weight")
        )

    def forward(
        self, p: dict[str, torch.Tensor], x: torch.Tensor, step: stack.Step
    ) -> torch.Tensor:
        """Logits ``[K, B, classes]`` for inputs ``[K, B, width of block first]``."""
        h = x.flatten(2)
        fixed = stack.Step(False)
        for i in range(self.first, len(self.config.hidden)):
            here = fixed if i < self.frozen else step
            h = stack.linear(h, p, f"{self.prefix}.{i}.0")
            if self.config.batch_norm:
                h = stack.batch_norm(h, p, f"{self.prefix}.{i}.1", here)
            h = torch.relu(h)
            if here.noise is not None and (m := here.noise.keep((h.shape[2],))) is not None:
                h = h * m
        return stack.linear(h, p, "head")
