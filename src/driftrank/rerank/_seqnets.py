"""Torch modules of the sequence models: shared transformer blocks, the re-ranker net and SASRec.

Only :mod:`driftrank.rerank._model`, :mod:`driftrank.rerank._sasrec` and the training loop
import this module, and only inside their methods, so ``import driftrank.rerank`` stays free
of torch.

Shape letters: ``B`` rows (users or training windows), ``L`` history positions (left-padded,
oldest first), ``Q`` query positions per row, ``C`` candidates, ``N`` catalog items, ``d`` model
width, ``S`` decay scales, ``H`` candidate-attention heads. Times are float32 days relative to a
per-row reference time (≤ 0 in the past).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

__all__ = [
    "CausalEncoder",
    "Dropout",
    "RerankerNet",
    "SASRecNet",
    "TransformerBlock",
    "decayed_interests",
    "gap_buckets",
]

_LN2 = math.log(2.0)
_MINUTES_PER_DAY = 1440.0


def gap_buckets(gap_days: Tensor, n_buckets: int) -> Tensor:
    """Log-spaced bucket of a time gap: ``floor(log2(1 + gap / 1 minute))``, clipped to ``[0, n-1]``.

    Bucket 0 is "under a minute", 6 about an hour, 10 a day, 13 a week, 15 a month, 19 a
    year; with the default 24 buckets the last one holds gaps of 16 years and more.
    ``gap_days: float[...]`` (negative gaps count as 0) → ``int64[...]``.
    """
    minutes = gap_days.clamp_min(0.0) * _MINUTES_PER_DAY
    return torch.floor(torch.log2(1.0 + minutes)).clamp(0, n_buckets - 1).long()


def decayed_interests(gap: Tensor, visible: Tensor, vectors: Tensor, log_tau: Tensor) -> Tensor:
    """Time-decayed means ``[B, Q, S, d]`` of history vectors, one per half-life.

    ``I_s = Σ_k w_k x_k / Σ_k w_k`` with ``w_k = 2^(-gap_k / τ_s)`` over the visible events;
    ``gap: [B, Q, L]`` days from each event to each query, ``visible: bool[B, Q, L]``,
    ``vectors: [B, L, d]``, ``log_tau: [S]`` natural log of the half-lives in days. Computed as
    a softmax of log-weights, so old events never underflow to an all-zero weight vector.
    """
    logw = -gap[..., None] * (_LN2 / log_tau.exp())  # [B, Q, L, S]
    logw = logw.masked_fill(~visible[..., None], float("-inf"))
    return torch.einsum("bqls,bld->bqsd", torch.softmax(logw, dim=2), vectors)


class Dropout(nn.Module):
    """Inverted dropout whose CPU masks come from numpy's PCG64 generator.

    torch's CPU dropout draws one Mersenne-Twister number per element; at the re-ranker's
    sizes that was a fifth of a training step. This draws one random byte per element from a
    numpy generator seeded by one draw from torch's global generator, so ``torch.manual_seed``
    still makes training reproducible; ``p`` is rounded to a multiple of 1/256 (0.2 drops
    51/256 = 19.9 %). Tensors on other devices use torch's own kernel.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
        self.p = p
        self._cut = min(255, round(p * 256))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self._cut == 0:
            return x
        if x.device.type != "cpu":
            return nnf.dropout(x, self.p, True)
        seed = int(torch.randint(0, 2**62, (1,)).item())
        bits = np.random.default_rng(seed).integers(0, 256, size=tuple(x.shape), dtype=np.uint8)
        keep = torch.from_numpy((bits >= self._cut).view(np.uint8))
        return x * keep * (256.0 / (256 - self._cut))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention block: ``x + Attn(LN(x))``, then ``x + FFN(LN(x))``."""

    def __init__(self, dim: int, heads: int, dropout: float, ffn_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.ln_attn = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn_dim)
        self.ffn_out = nn.Linear(ffn_dim, dim)
        self.act: nn.Module = nn.GELU() if activation == "gelu" else nn.ReLU()
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, allowed: Tensor, last_only: bool = False) -> Tensor:
        """``x: [B, L, d]``, ``allowed: bool[B, L, L]`` (query, key) → ``[B, L, d]``, or only the
        last position's output ``[B, 1, d]`` with ``last_only`` (keys and values still come from
        every position; the queries, the attention output and the feed-forward of the others,
        two thirds of the work, are skipped)."""
        b, n, d = x.shape
        dh = d // self.heads
        h = self.ln_attn(x)
        if last_only:
            w, bias = self.qkv.weight, self.qkv.bias
            q = _rows_of_8(lambda r: nnf.linear(r, w[:d], bias[:d]), h[:, -1])
            q = q.view(b, 1, self.heads, dh).transpose(1, 2)
            kv = nnf.linear(h, w[d:], bias[d:]).view(b, n, 2, self.heads, dh).permute(2, 0, 3, 1, 4)
            k, v = kv[0], kv[1]
            att = nnf.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, -1:])
            last = x[:, -1] + _rows_of_8(self.out, att.reshape(b, d))
            ffn = _rows_of_8(lambda r: self.ffn_out(self.act(self.ffn_in(r))), self.ln_ffn(last))
            return (last + ffn)[:, None]
        qkv = self.qkv(h).view(b, n, 3, self.heads, dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.training and self.dropout > 0 and x.device.type == "cpu":
            # Written out so that the attention weights go through the cheaper Dropout above.
            logits = (q @ k.transpose(2, 3)) * dh**-0.5
            weights = torch.softmax(logits.masked_fill(~allowed[:, None], float("-inf")), dim=-1)
            att = self.drop(weights) @ v
        else:
            att = nnf.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
            )
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ffn_out(self.drop(self.act(self.ffn_in(self.ln_ffn(x))))))


def _rows_of_8(fn: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """``fn`` (row-wise linear layers) of ``rows: [m, d]``, run on a multiple of 8 rows (zero
    rows added, their outputs dropped). The CPU matrix kernels give a row bits that depend on
    where it falls in a block of rows when the count is ragged; padded, a user's state is the
    same whichever batch computed it (measured: 1-129 rows against one batch of 512), which the
    state memo and ``save``/``load`` rely on."""
    pad = -rows.shape[0] % 8
    if pad == 0:
        return fn(rows)
    return fn(torch.cat([rows, rows.new_zeros(pad, rows.shape[1])]))[: rows.shape[0]]


class CausalEncoder(nn.Module):
    """A stack of :class:`TransformerBlock` with a final LayerNorm.

    Position ``q`` sees keys ``k <= q`` that are real events (``causal=True``), or every real
    event (``causal=False``, for masked-item pre-training). Every position may also see itself,
    so padded rows never produce NaN; real positions never see padding.
    """

    def __init__(
        self, dim: int, n_layers: int, heads: int, dropout: float, ffn_dim: int, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [TransformerBlock(dim, heads, dropout, ffn_dim, activation) for _ in range(n_layers)]
        )
        self.ln = nn.LayerNorm(dim)

    def forward(self, x: Tensor, valid: Tensor, causal: bool = True, last_only: bool = False) -> Tensor:
        """``x: [B, L, d]``, ``valid: bool[B, L]`` → ``[B, L, d]``; with ``last_only``, just the
        last position's states ``[B, 1, d]`` (the last block skips the other positions)."""
        n = x.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        allowed = valid[:, None, :] | eye
        if causal:
            allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        last = len(self.blocks) - 1
        for j, block in enumerate(self.blocks):
            x = block(x, allowed, last_only=last_only and j == last)
        return self.ln(x)


class RerankerNet(nn.Module):
    """The sequence re-ranker: history transformer, decayed interests, candidate→history attention.

    Item ``i`` is represented by ``e_i = P x_i + m_i * id_i`` where ``x_i`` is its (L2-normalised)
    text vector, ``P`` a learned projection, ``id_i`` a learned ID embedding and ``m_i`` 1 for
    items seen in training (0 for items added later, which are scored by text alone). The score
    of candidate ``c`` for a user at time ``T`` is::

        u · e_c + b_c + sum_h sum_k softmax_k(q_h(e_c)·k_h(e_k)/√d_h + g_h(bucket(T - t_k))) v_h(e_k)·o_h(e_c)

    with ``u = h_last + W [I_1(T); ...; I_S(T)] + s(bucket(T - t_last))``: the transformer output at
    the latest event, the decayed interest vectors ``I_s(T) = Σ_k w_k e_k / Σ_k w_k`` with
    ``w_k = 2^(-(T - t_k)/τ_s)`` (``τ_s = exp(log_tau_s)`` days, learnable), and an embedding of
    how long ago the latest event was.
    """

    text: Tensor  # buffer float32[N, d_text]: L2-normalised item text vectors
    has_id: Tensor  # buffer float32[N]: 1 where the item has a trained ID embedding

    def __init__(
        self,
        text: Tensor,
        has_id: Tensor,
        *,
        dim: int,
        n_layers: int,
        heads: int,
        attention_heads: int,
        max_len: int,
        dropout: float,
        half_lives_days: tuple[float, ...],
        learn_half_lives: bool,
        n_buckets: int,
        candidate_attention: bool,
    ) -> None:
        super().__init__()
        n_items, d_text = text.shape
        if dim % attention_heads:
            raise ValueError(f"dim {dim} must be divisible by attention_heads {attention_heads}")
        self.dim = dim
        self.max_len = max_len
        self.n_buckets = n_buckets
        self.attention_heads = attention_heads
        self.candidate_attention = candidate_attention
        self.register_buffer("text", text.float())
        self.register_buffer("has_id", has_id.float())
        self.item_id = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item_id.weight, std=dim**-0.5)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.text_proj = nn.Linear(d_text, dim, bias=False)
        nn.init.normal_(self.text_proj.weight, std=dim**-0.5)
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        # One extra bucket for "no earlier event in the window".
        self.prev_gap = nn.Embedding(n_buckets + 1, dim)
        nn.init.normal_(self.prev_gap.weight, std=0.02)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.drop = Dropout(dropout)
        self.encoder = CausalEncoder(dim, n_layers, heads, dropout, 4 * dim, "gelu")
        self.log_tau = nn.Parameter(
            torch.log(torch.tensor(half_lives_days, dtype=torch.float32)), requires_grad=learn_half_lives
        )
        n_scales = len(half_lives_days)
        self.interest = nn.Linear(n_scales * dim, dim) if n_scales else None
        self.staleness = nn.Embedding(n_buckets, dim)
        nn.init.zeros_(self.staleness.weight)
        if candidate_attention:
            self.att_q = nn.Linear(dim, dim, bias=False)
            self.att_k = nn.Linear(dim, dim, bias=False)
            self.att_v = nn.Linear(dim, dim, bias=False)
            self.att_o = nn.Linear(dim, dim, bias=False)
            nn.init.zeros_(self.att_o.weight)  # starts as a pure dot-product model
            self.att_gap = nn.Parameter(torch.zeros(attention_heads, n_buckets))

    # ------------------------------------------------------------------ items
    @property
    def n_items(self) -> int:
        """Catalog size the net scores."""
        return int(self.text.shape[0])

    def items(self, keep_id: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Item vectors ``[N, d]`` and biases ``[N]``; ``keep_id: float[N]`` drops ID parts (0)."""
        m = self.has_id if keep_id is None else self.has_id * keep_id
        vectors = self.text_proj(self.text) + self.item_id.weight * m[:, None]
        return vectors, self.item_bias * m

    # ------------------------------------------------------------------ history
    def encode(
        self,
        table: Tensor,
        items: Tensor,
        times: Tensor,
        valid: Tensor,
        *,
        masked: Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Transformer states ``[B, L, d]`` and raw item vectors ``[B, L, d]`` of the history.

        ``items: int64[B, L]`` (-1 = padding), ``times: float[B, L]`` days, ``valid: bool[B, L]``.
        ``masked: bool[B, L]`` replaces those inputs by a mask token and attends both ways
        (masked-item pre-training); otherwise attention is causal. ``last_only`` (causal only)
        returns the states of the last position alone, ``[B, 1, d]``, for serving (in eval
        mode: no dropout on that path).
        """
        eh = self.history_vectors(table, items, valid)
        x = eh
        if masked is not None:
            x = torch.where(masked[..., None], self.mask_token.expand_as(eh), eh)
        prev_ok = torch.zeros_like(valid)
        prev_ok[:, 1:] = valid[:, 1:] & valid[:, :-1]
        gaps = torch.zeros_like(times)
        gaps[:, 1:] = times[:, 1:] - times[:, :-1]
        bucket = torch.where(prev_ok, gap_buckets(gaps, self.n_buckets), self.n_buckets)
        n = items.shape[1]
        pos = self.pos.weight[self.max_len - n :]
        x = self.drop(x + pos + self.prev_gap(bucket))
        if last_only and masked is not None:
            raise ValueError("last_only needs causal attention (masked=None)")
        return self.encoder(x, valid, causal=masked is None, last_only=last_only), eh

    @staticmethod
    def context(times: Tensor, valid: Tensor, qpos: Tensor, qtime: Tensor) -> tuple[Tensor, Tensor]:
        """Gaps ``[B, Q, L]`` (days from each history event to each query time) and visibility.

        ``qpos: int64[B, Q]`` is the latest history position a query may see, ``qtime:
        float[B, Q]`` its time. A query always "sees" its own position so that an empty history
        gives zeros, not NaN.
        """
        n = times.shape[1]
        ar = torch.arange(n, device=times.device)
        visible = (ar <= qpos[..., None]) & valid[:, None, :]
        visible = visible | (ar == qpos[..., None])
        gap = (qtime[..., None] - times[:, None, :]).clamp_min(0.0)
        return gap, visible

    @staticmethod
    def history_vectors(table: Tensor, items: Tensor, valid: Tensor) -> Tensor:
        """Item vectors ``[B, L, d]`` of a history (zeros at padding)."""
        # nnf.embedding, not table[items]: the same values, and its backward is faster on CPU.
        return nnf.embedding(items.clamp_min(0), table) * valid[..., None]

    def query(self, states: Tensor, eh: Tensor, gap: Tensor, visible: Tensor, qpos: Tensor) -> Tensor:
        """The user vector ``u: [B, Q, d]`` of each query (see the class docstring)."""
        d = states.shape[-1]
        return self.query_from(
            torch.gather(states, 1, qpos[..., None].expand(-1, -1, d)), eh, gap, visible, qpos
        )

    def query_from(self, u: Tensor, eh: Tensor, gap: Tensor, visible: Tensor, qpos: Tensor) -> Tensor:
        """:meth:`query` given the transformer states at the query positions, ``u: [B, Q, d]``."""
        if self.interest is not None:
            u = u + self.interest(decayed_interests(gap, visible, eh, self.log_tau).flatten(2))
        last_gap = torch.gather(gap, 2, qpos[..., None]).squeeze(-1)
        return u + self.staleness(gap_buckets(last_gap, self.n_buckets))

    def item_tables(self, keep_id: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-item tensors the scorer needs: vectors ``[N, d]``, biases ``[N]`` and the
        candidate-attention query/output projections ``[N, H, d/H]`` (empty without attention).

        Computed once per batch or request, so candidates are gathered, not re-projected.
        """
        vec, bias = self.items(keep_id)
        if not self.candidate_attention:
            empty = vec.new_zeros(0)
            return vec, bias, empty, empty
        h = self.attention_heads
        shape = (vec.shape[0], h, self.dim // h)
        return vec, bias, self.att_q(vec).view(shape), self.att_o(vec).view(shape)

    def scores(
        self,
        u: Tensor,
        gap_bias: Tensor,
        eh: Tensor,
        tables: tuple[Tensor, Tensor, Tensor, Tensor],
        cand: Tensor | None = None,
    ) -> Tensor:
        """Scores ``[B, Q, C]`` of candidates against each query.

        ``gap_bias`` is :meth:`gap_bias` of the queries' gaps and visibility (unused without
        candidate attention); ``tables`` is :meth:`item_tables` output; ``cand`` is
        ``int64[B, Q, C]`` item indices per query, or ``None`` for the whole catalog (``C = N``,
        the same for every row).
        """
        vec, bias, q_tab, o_tab = tables
        b, n, d = eh.shape
        nq = u.shape[1]
        if cand is None:
            dot = u @ vec.T + bias
        else:
            # nnf.embedding rather than vec[cand]: the same values, a faster backward on CPU.
            dot = (u[:, :, None, :] * nnf.embedding(cand, vec)).sum(-1) + nnf.embedding(
                cand, bias[:, None]
            ).squeeze(-1)
        if not self.candidate_attention:
            return dot
        h = self.attention_heads
        dh = d // h
        # Heads lead and history positions come last, so the softmax runs over a contiguous axis.
        k = self.att_k(eh).view(b, n, h, dh).transpose(1, 2)  # [B, H, L, dh]
        v = self.att_v(eh).view(b, n, h, dh).transpose(1, 2)
        if cand is not None and not torch.is_grad_enabled():
            return dot + self._fused_candidate_attention(k, v, gap_bias, tables, cand)
        if cand is None:
            q = q_tab.transpose(0, 1)[None]  # [1, H, N, dh]
            o = o_tab.transpose(0, 1)[None, :, None]  # [1, H, 1, N, dh]
            logits = (q @ k.transpose(2, 3))[:, :, None]  # [B, H, 1, N, L]
        else:
            c = cand.shape[2]
            # [B, H, Q*C, dh] queries and [B, H, Q, C, dh] outputs of the candidates.
            q = nnf.embedding(cand, q_tab.flatten(1)).view(b, nq * c, h, dh).transpose(1, 2)
            o = nnf.embedding(cand, o_tab.flatten(1)).view(b, nq, c, h, dh).permute(0, 3, 1, 2, 4)
            logits = (q @ k.transpose(2, 3)).view(b, h, nq, c, n)  # [B, H, Q, C, L]
        p = torch.softmax(logits * dh**-0.5 + gap_bias[:, :, :, None], dim=-1)  # [B, H, Q, C, L]
        # sum_k p_k (v_k . o_c) = o_c . (sum_k p_k v_k): one matmul, no [B, H, Q, C, L] values tensor.
        mixed = p @ v[:, :, None]  # [B, H, Q, C, dh]
        return dot + (mixed * o).sum(-1).sum(1)

    def gap_bias(self, gap: Tensor, visible: Tensor) -> Tensor:
        """``[B, H, Q, L]``: each head's learned bias for the time from a history event to the
        query, ``-inf`` where the query may not see the event (``H = 0`` without candidate
        attention, which has no such bias)."""
        if not self.candidate_attention:
            return gap.new_zeros((gap.shape[0], 0, *gap.shape[1:]))
        gap_bias = self.att_gap[:, gap_buckets(gap, self.n_buckets)]  # [H, B, Q, L]
        return gap_bias.masked_fill(~visible[None], float("-inf")).transpose(0, 1)

    def _fused_candidate_attention(
        self,
        k: Tensor,
        v: Tensor,
        gap_bias: Tensor,
        tables: tuple[Tensor, Tensor, Tensor, Tensor],
        cand: Tensor,
    ) -> Tensor:
        """The candidate-attention term of :meth:`scores` ``[B, Q, C]`` for candidate lists,
        without gradients: one fused attention call per query over ``[B, H, C, L]`` (``k``,
        ``v``: ``[B, H, L, dh]``; ``gap_bias``: ``[B, H, Q, L]``, broadcast over the
        candidates). About 1.3x faster on CPU than the written-out form; equal up to float
        rounding (tested)."""
        _, _, q_tab, o_tab = tables
        b, h, _, dh = k.shape
        nq, c = cand.shape[1], cand.shape[2]
        q_all = nnf.embedding(cand, q_tab.flatten(1))  # [B, Q, C, d]
        o_all = nnf.embedding(cand, o_tab.flatten(1))
        att = []
        for j in range(nq):
            q = q_all[:, j].reshape(b, c, h, dh).transpose(1, 2)  # [B, H, C, dh]
            o = o_all[:, j].reshape(b, c, h, dh).transpose(1, 2)
            mixed = nnf.scaled_dot_product_attention(q, k, v, attn_mask=gap_bias[:, :, j : j + 1])
            att.append((mixed * o).sum(-1).sum(1))  # [B, C]
        return torch.stack(att, dim=1)


class SASRecNet(nn.Module):
    """SASRec (Kang & McAuley, 2018): a causal transformer over item-ID embeddings.

    Inputs are scaled ID embeddings plus learned positions; the state at each position is
    scored against the (shared) item embedding table.
    """

    def __init__(
        self, n_items: int, *, dim: int, n_layers: int, heads: int, dropout: float, max_len: int
    ) -> None:
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.item = nn.Embedding(n_items, dim)
        nn.init.normal_(self.item.weight, std=dim**-0.5)
        self.pos = nn.Embedding(max_len, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.drop = Dropout(dropout)
        self.encoder = CausalEncoder(dim, n_layers, heads, dropout, dim, "relu")

    def forward(self, items: Tensor) -> Tensor:
        """States ``[B, L, d]`` for ``items: int64[B, L]`` (-1 = left padding)."""
        valid = items >= 0
        x = self.item(items.clamp_min(0)) * (self.dim**0.5) * valid[..., None]
        x = self.drop(x + self.pos.weight[self.max_len - items.shape[1] :])
        return self.encoder(x, valid)

    def logits(self, states: Tensor) -> Tensor:
        """``[..., N]`` scores of every item for states ``[..., d]``."""
        return states @ self.item.weight.T
