"""Torch training of :class:`~driftrank.fusion.FusionModel` (imported only when fitting)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from driftrank.errors import DataError
from driftrank.fusion._features import FeatureMatrix
from driftrank.fusion._input import target_rows
from driftrank.types import Candidates

if TYPE_CHECKING:
    from driftrank.fusion._gated import FitReport, FusionConfig


class GatedScorer(nn.Module):
    """Torch twin of the numpy forward in ``_gated.py``; parameter names are the state names."""

    def __init__(self, params: dict[str, np.ndarray], group_index: np.ndarray, n_groups: int) -> None:
        super().__init__()
        self.p = nn.ParameterDict(
            {k: nn.Parameter(torch.from_numpy(np.array(v, dtype=np.float32))) for k, v in params.items()}
        )
        self.group_index = torch.from_numpy(np.asarray(group_index, dtype=np.int64))  # feature -> gate column
        self.n_groups = n_groups
        self.has_gate_hidden = "gate_w1" in params
        self.has_mlp = "mlp_w1" in params
        self.n_x = len(group_index)

    def forward(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``x: [B, L, F]``, ``u: [B, U]`` -> scores ``[B, L]``."""
        p = self.p
        h = u
        if self.has_gate_hidden:
            h = torch.tanh(h @ p["gate_w1"].T + p["gate_b1"])
        gate = torch.softmax(h @ p["gate_w2"].T + p["gate_b2"], dim=-1)  # [B, G]
        w = self.n_groups * gate[:, self.group_index] * p["lin_w"]  # [B, F]
        s = torch.einsum("blf,bf->bl", x, w) + p["lin_b"]
        if self.has_mlp:
            w1 = p["mlp_w1"]
            pre = x @ w1[:, : self.n_x].T + (u @ w1[:, self.n_x :].T + p["mlp_b1"])[:, None, :]
            s = s + torch.relu(pre) @ p["mlp_w2"] + p["mlp_b2"]
        return s

    def numpy_state(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, named as in the model state (``lin_w``, ``mlp_w1``, ...)."""
        return {k: v.detach().numpy().astype(np.float32, copy=True) for k, v in self.p.items()}


def _init_params(
    rng: np.random.Generator, n_x: int, n_u: int, n_groups: int, gate_hidden: int, mlp_hidden: int
) -> dict[str, np.ndarray]:
    """Seeded init in numpy (torch's global RNG is left alone).

    The gate's output layer and the linear and MLP output weights start at zero, so training
    starts from "every candidate equal, every group weighted alike" and grows from there.
    """
    p: dict[str, np.ndarray] = {
        "lin_w": np.zeros(n_x, dtype=np.float32),
        "lin_b": np.zeros(1, dtype=np.float32),
    }
    gate_in = n_u
    if gate_hidden and n_u:
        p["gate_w1"] = (rng.standard_normal((gate_hidden, n_u)) / np.sqrt(n_u)).astype(np.float32)
        p["gate_b1"] = np.zeros(gate_hidden, dtype=np.float32)
        gate_in = gate_hidden
    p["gate_w2"] = np.zeros((n_groups, gate_in), dtype=np.float32)
    p["gate_b2"] = np.zeros(n_groups, dtype=np.float32)
    if mlp_hidden:
        d = n_x + n_u
        p["mlp_w1"] = (rng.standard_normal((mlp_hidden, d)) * np.sqrt(2.0 / max(d, 1))).astype(np.float32)
        p["mlp_b1"] = np.zeros(mlp_hidden, dtype=np.float32)
        p["mlp_w2"] = np.zeros(mlp_hidden, dtype=np.float32)
        p["mlp_b2"] = np.zeros(1, dtype=np.float32)
    return p


def _listwise_loss(
    scores: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy per user (``[B]``) and the target's 0-based rank (ties pessimistic)."""
    s = scores.masked_fill(~mask, float("-inf"))
    loss = torch.logsumexp(s, dim=1) - s.gather(1, target[:, None])[:, 0]
    t = s.gather(1, target[:, None])
    rank = ((s > t) | ((s == t) & mask)).sum(dim=1) - 1
    return loss, rank


def train_gated(
    config: FusionConfig,
    fm: FeatureMatrix,
    candidates: Candidates,
    targets: np.ndarray,
    group_index: np.ndarray,
) -> tuple[dict[str, np.ndarray], FitReport]:
    """Fit the gated scorer; returns its parameters as numpy arrays and a :class:`FitReport`."""
    from driftrank.fusion._gated import FitReport

    start = time.perf_counter()
    t = np.asarray(targets)
    n = len(candidates.users)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer):
        raise DataError(f"targets must be int[{n}] (one item index per user of the batch, -1 = none)")
    trow = target_rows(candidates, t)
    usable = np.flatnonzero(trow >= 0)
    n_no_target = int((t < 0).sum())
    n_missing = int(((t >= 0) & (trow < 0)).sum())
    if len(usable) < 2:
        raise DataError(
            f"fusion needs at least 2 users whose target is among their candidates, got {len(usable)} "
            f"({n_no_target} without a target, {n_missing} whose target was not retrieved)"
        )
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(usable)
    n_valid = round(config.valid_share * len(perm)) if config.valid_share > 0 else 0
    n_valid = min(max(n_valid, 1 if config.valid_share > 0 else 0), len(perm) - 1)
    valid_users, train_users = np.sort(perm[:n_valid]), perm[n_valid:]

    # padded layout: row index per (user, slot), the extra last row of X is all zeros
    counts = candidates.counts()
    width = int(counts[usable].max())
    m = len(fm.x)
    slot = np.arange(width)
    pad = np.where(slot[None, :] < counts[:, None], candidates.offsets[:-1, None] + slot[None, :], m)
    tcol = trow - candidates.offsets[:-1]

    n_x, n_u = fm.x.shape[1], fm.u.shape[1]
    n_groups = int(group_index.max()) + 1 if len(group_index) else 0
    params = _init_params(rng, n_x, n_u, n_groups, config.gate_hidden, config.mlp_hidden)
    model = GatedScorer(params, group_index, n_groups)
    X = torch.from_numpy(np.vstack([fm.x, np.zeros((1, n_x), dtype=np.float32)]))
    U = torch.from_numpy(np.ascontiguousarray(fm.u, dtype=np.float32))
    P = torch.from_numpy(pad)
    T = torch.from_numpy(tcol)
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)

    def batch(users: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(users)
        rows = P[idx]
        # trim the padding to this batch's longest list
        w = int(counts[users].max())
        rows = rows[:, :w]
        return X[rows], U[idx], rows < m, T[idx]

    def evaluate(users: np.ndarray) -> tuple[float, float]:
        if not len(users):
            return float("nan"), float("nan")
        losses, gains = [], []
        with torch.no_grad():
            for s in range(0, len(users), 1024):
                xb, ub, mb, tb = batch(users[s : s + 1024])
                loss, rank = _listwise_loss(model(xb, ub), mb, tb)
                losses.append(loss.numpy())
                r = rank.numpy()
                gains.append(np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0))
        return float(np.concatenate(losses).mean()), float(np.concatenate(gains).mean())

    best = (np.inf, 0)
    best_state = model.numpy_state()
    train_loss: list[float] = []
    valid_loss: list[float] = []
    valid_ndcg: list[float] = []
    bs = config.batch_users
    for epoch in range(1, config.max_epochs + 1):
        order = train_users[rng.permutation(len(train_users))]
        total, seen = 0.0, 0
        for s in range(0, len(order), bs):
            xb, ub, mb, tb = batch(order[s : s + bs])
            loss, _ = _listwise_loss(model(xb, ub), mb, tb)
            mean = loss.mean()
            opt.zero_grad()
            mean.backward()
            opt.step()
            total += float(mean.detach()) * len(tb)
            seen += len(tb)
        train_loss.append(total / max(seen, 1))
        vl, vn = evaluate(valid_users)
        valid_loss.append(vl)
        valid_ndcg.append(vn)
        if n_valid == 0:
            best = (np.inf, epoch)
            continue
        if vl < best[0] - 1e-6:
            best = (vl, epoch)
            best_state = model.numpy_state()
        elif epoch - best[1] >= config.patience:
            break
    if n_valid == 0:
        best_state = model.numpy_state()
    report = FitReport(
        n_users=n,
        n_no_target=n_no_target,
        n_target_missing=n_missing,
        n_train=len(train_users),
        n_valid=n_valid,
        epochs=len(train_loss),
        best_epoch=best[1],
        train_loss=tuple(train_loss),
        valid_loss=tuple(valid_loss),
        valid_ndcg10=tuple(valid_ndcg),
        seconds=time.perf_counter() - start,
    )
    return best_state, report
