"""Linear probes fitted in closed batches: every seed × regularisation strength of a few-shot
size as one L-BFGS problem — the standard linear-evaluation protocol, beside the engine's
mini-batch heads."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def fit_probes(
    x: torch.Tensor, y: torch.Tensor, c_grid: tuple[float, ...], iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, loss = mean cross-entropy + λ/2·‖W‖² with λ = 1/(C·N),
    for every (seed, C) at once: ``x`` [S, N, D], ``y`` [S, N] → W [S, len(C), 10, D], b.

    With fewer images than feature dimensions the optimum lies in the span of the training
    features (representer theorem; the bias is not penalised), so W = A·X is fitted through
    the kernel K = X·Xᵀ: N×10 unknowns per fit instead of D×10, the same solution. The fits are
    independent convex problems; L-BFGS on their sum reaches each one's optimum.
    """
    s, n, d = x.shape
    nc = len(c_grid)
    gram = torch.bmm(x, x.transpose(1, 2))  # [S, N, N]
    lam = torch.tensor([1.0 / (c * n) for c in c_grid], dtype=x.dtype).view(1, nc)
    a = torch.zeros(s, nc * 10, n, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(s, nc * 10, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS(
        [a, b],
        max_iter=iters,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
    )
    target = y.unsqueeze(1).expand(s, nc, n).reshape(-1)

    def closure():
        opt.zero_grad()
        ak = torch.bmm(a, gram)  # [S, C*10, N]: the training logits, and K·a for the penalty
        logits = (ak + b.unsqueeze(2)).view(s, nc, 10, n).permute(0, 1, 3, 2)
        ce = F.cross_entropy(logits.reshape(-1, 10), target, reduction="sum") / n
        reg = ((a * ak).view(s, nc, -1).sum(2) * lam).sum() / 2
        loss = ce + reg
        loss.backward()
        return loss

    opt.step(closure)
    w = torch.bmm(a.detach(), x).view(s, nc, 10, d)
    return w, b.detach().view(s, nc, 10)


def probe_scores(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Accuracy and mean log-likelihood of one seed's fits (``w`` [C, 10, D]) on ``x`` [M, D]."""
    logits = torch.einsum("md,ckd->cmk", x, w) + b.unsqueeze(1)
    acc = (logits.argmax(-1) == y).double().mean(-1)
    ll = logits.log_softmax(-1).gather(-1, y.view(1, -1, 1).expand(len(w), -1, 1)).mean((1, 2))
    return acc, ll
