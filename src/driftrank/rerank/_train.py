"""The training loop shared by the torch sequence models.

Adam over epochs of mini-batches, validation NDCG@10 after every ``eval_every`` epochs, early
stopping with a patience counted in evaluations, and at the end either the best weights or the
average of the last few checkpoints (``average``).
Everything random inside runs under :func:`seeded`, which forks torch's global generator so a
fit neither depends on nor disturbs the caller's random state.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from driftrank._progress import bar as progress_bar
from driftrank.eval import Targets, metrics_at, target_ranks

log = logging.getLogger("driftrank.rerank")

__all__ = ["FitReport", "LoopResult", "load_net_arrays", "ndcg_at_10", "net_arrays", "seeded", "train_loop"]


@dataclass(frozen=True)
class FitReport:
    """What one ``fit`` did.

    ``epochs``: epochs run (pre-training excluded); ``best_epoch``: the epoch whose weights were
    kept; ``best_score``: its validation NDCG@10 (``None`` without validation); ``seconds``:
    wall time of the whole fit; ``history``: one dict per epoch (``epoch``, ``loss``, and
    ``ndcg@10`` where evaluated); ``pretrain_history`` likewise for pre-training epochs.
    ``averaged``: the epochs whose weights were averaged into the kept model (empty when the
    best epoch's weights were kept as they are); ``averaged_score``: that average's validation
    NDCG@10.
    """

    epochs: int
    best_epoch: int
    best_score: float | None
    seconds: float
    history: tuple[dict[str, float], ...]
    pretrain_history: tuple[dict[str, float], ...] = ()
    averaged: tuple[int, ...] = ()
    averaged_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (stored with the model)."""
        out = asdict(self)
        out["history"] = [dict(h) for h in self.history]
        out["pretrain_history"] = [dict(h) for h in self.pretrain_history]
        out["averaged"] = list(self.averaged)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            int(d["epochs"]),
            int(d["best_epoch"]),
            None if d["best_score"] is None else float(d["best_score"]),
            float(d["seconds"]),
            tuple(dict(h) for h in d["history"]),
            tuple(dict(h) for h in d.get("pretrain_history", ())),
            tuple(int(e) for e in d.get("averaged", ())),
            None if d.get("averaged_score") is None else float(d["averaged_score"]),
        )

    @classmethod
    def of(cls, loop: LoopResult, seconds: float, pretrain: LoopResult | None = None) -> FitReport:
        """The report of a fit whose main training was ``loop`` (and pre-training ``pretrain``)."""
        return cls(
            loop.epochs,
            loop.best_epoch,
            loop.best_score,
            seconds,
            loop.history,
            () if pretrain is None else pretrain.history,
            loop.averaged,
            loop.averaged_score,
        )


class LoopResult(NamedTuple):
    """What :func:`train_loop` did: epochs run, the best evaluated epoch and its score, one
    record per epoch, and the epochs averaged into the kept weights (with that average's
    validation score)."""

    epochs: int
    best_epoch: int
    best_score: float | None
    history: tuple[dict[str, float], ...]
    averaged: tuple[int, ...] = ()
    averaged_score: float | None = None


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded to ``seed``, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def net_arrays(net: torch.nn.Module, prefix: str = "net.") -> dict[str, np.ndarray]:
    """The module's state dict as numpy copies named ``<prefix><parameter name>``."""
    return {f"{prefix}{k}": v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


def load_net_arrays(net: torch.nn.Module, arrays: dict[str, np.ndarray], prefix: str = "net.") -> None:
    """Load :func:`net_arrays` output into ``net`` (strict: ``RuntimeError`` on missing or extra keys)."""
    n = len(prefix)
    state = {k[n:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(prefix)}
    net.load_state_dict(state, strict=True)


def ndcg_at_10(ranked: np.ndarray, targets: Targets) -> float:
    """Mean NDCG@10 of ``ranked: int[n, >=10]`` (rows aligned with ``targets``)."""
    if len(targets) == 0:
        return 0.0
    return float(metrics_at(target_ranks(ranked, targets.items), 10)["NDCG@10"].mean())


def train_loop(
    net: torch.nn.Module,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[Any], torch.Tensor],
    validate: Callable[[], float] | None = None,
    patience: int = 10,
    min_epochs: int = 0,
    eval_every: int = 1,
    progress: bool = False,
    desc: str = "train",
    max_grad_norm: float | None = 5.0,
    average: int = 1,
) -> LoopResult:
    """Train ``net`` with Adam and leave it in eval mode with the weights to keep.

    ``batches(epoch)`` yields the epoch's batches (it owns shuffling and sampling, seeded by the
    caller); ``step(batch)`` returns the scalar loss. With ``validate`` (higher is better,
    called under ``torch.inference_mode`` in eval mode) training stops once ``patience``
    evaluations in a row did not improve on the best (never before epoch ``min_epochs``), and
    the best weights are restored.

    ``average > 1`` keeps instead the mean of the weights of the last ``average`` checkpoints
    (the evaluated epochs; every epoch without ``validate``). After an early stop with
    ``average = patience + 1`` these are the best checkpoint and the ones after it. On the
    small MovieLens sets the validation score moves by ±0.005 NDCG@10 from epoch to epoch, and
    the average of those neighbours ranks better than any one of them (docs/reranker.md). The
    average is validated too and reported, but kept either way: picking it only when its score
    beats the best checkpoint's would compare it with a maximum of noisy scores.
    """
    if isinstance(average, bool) or not isinstance(average, int) or average < 1:
        raise ValueError(f"average must be a positive integer, got {average!r}")
    params = [p for p in net.parameters() if p.requires_grad]
    # foreach: one multi-tensor update per step (the per-tensor loop is torch's CPU default).
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)
    best_score: float | None = None
    best_epoch = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad = 0
    history: list[dict[str, float]] = []
    # (epoch, weights) of the last `average` checkpoints, copied off the live parameters.
    recent: deque[tuple[int, dict[str, torch.Tensor]]] = deque(maxlen=average)
    bar = progress_bar(range(1, epochs + 1), enabled=progress, desc=desc, unit="epoch", leave=False)
    epoch = 0
    for epoch in bar:
        start = time.perf_counter()
        net.train()
        total, count = 0.0, 0
        for batch in batches(epoch):
            opt.zero_grad(set_to_none=True)
            loss = step(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss became {loss.item()} at epoch {epoch}")
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            opt.step()
            total += float(loss.detach())
            count += 1
        record: dict[str, float] = {"epoch": float(epoch), "loss": total / max(1, count)}
        evaluated = validate is not None and (epoch % eval_every == 0 or epoch == epochs)
        # At most one copy of the weights per checkpoint, shared by the best and the recent ones.
        snapshot = None
        if average > 1 and (evaluated or validate is None):
            snapshot = copy.deepcopy(net.state_dict())
            recent.append((epoch, snapshot))
        if evaluated:
            assert validate is not None
            net.eval()
            with torch.inference_mode():
                score = float(validate())
            record["ndcg@10"] = score
            if best_score is None or score > best_score + 1e-9:
                best_score, best_epoch, bad = score, epoch, 0
                best_state = snapshot if snapshot is not None else copy.deepcopy(net.state_dict())
            else:
                bad += 1
        record["seconds"] = time.perf_counter() - start
        history.append(record)
        log.info(
            "%s epoch %d: loss %.4f%s (%.1fs)",
            desc,
            epoch,
            record["loss"],
            f", validation NDCG@10 {record['ndcg@10']:.4f}" if "ndcg@10" in record else "",
            record["seconds"],
        )
        bar.set_postfix(
            loss=f"{record['loss']:.4f}",
            ndcg=f"{record.get('ndcg@10', math.nan):.4f}",
            best=f"{best_score if best_score is not None else math.nan:.4f}",
        )
        if validate is not None and bad >= patience and epoch >= min_epochs:
            log.info("%s: early stop after epoch %d (best epoch %d)", desc, epoch, best_epoch)
            break
    bar.close()
    net.eval()
    averaged: tuple[int, ...] = ()
    averaged_score: float | None = None
    if len(recent) > 1:
        net.load_state_dict(_mean_state([state for _, state in recent]))
        averaged = tuple(e for e, _ in recent)
        if validate is not None:
            with torch.inference_mode():
                averaged_score = float(validate())
            log.info(
                "%s: average of epochs %s, validation NDCG@10 %.4f", desc, list(averaged), averaged_score
            )
    elif best_state is not None:
        net.load_state_dict(best_state)
    if best_state is None:
        best_epoch = epoch
    return LoopResult(epoch, best_epoch, best_score, tuple(history), averaged, averaged_score)


def _mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point entries (summed in float64); other entries (integer
    buffers) from the last state."""
    out: dict[str, torch.Tensor] = {}
    for name, last in states[-1].items():
        if last.is_floating_point():
            total = torch.stack([s[name].double() for s in states]).sum(0)
            out[name] = (total / len(states)).to(last.dtype)
        else:
            out[name] = last
    return out
