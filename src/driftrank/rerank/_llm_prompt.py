"""Prompts of the LLM re-ranker as token ids: chat framing, history lines, labelled candidates.

Everything here is plain Python over a Hugging Face tokenizer; no torch. A prompt is assembled
from separately tokenised pieces (framing, one piece per line, item texts cached by text), so
the same query always gives the same ids, whichever batch it is in, and building a prompt is a
few list concatenations once the item texts are known.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from driftrank.errors import ConfigError

__all__ = ["LABEL_SETS", "PromptBuilder", "PromptIds", "format_age"]

# Tried in order until one gives a distinct single token per label for the tokenizer at hand.
LABEL_SETS: tuple[tuple[str, ...], ...] = (
    tuple(string.ascii_uppercase),
    tuple(string.ascii_lowercase),
    tuple(f"({c})" for c in string.ascii_uppercase),
)

# A sentinel unlikely to occur in a chat template; the template is rendered around it once to
# learn the framing before and after the user's message.
_SENTINEL = "\x1f\x1eDRIFTRANK_USER_MESSAGE\x1e\x1f"


def format_age(seconds: float) -> str:
    """How long ago an event happened, in words: ``"just now"``, ``"5 minutes ago"``, ``"3 days ago"``.

    ``seconds`` is the (non-negative) time between the event and the ranking time. Units grow
    with the age so the model reads a coarse, human scale: minutes below an hour, hours below a
    day, days below two weeks, weeks below two months, months below two years, then years.
    """
    s = max(0.0, float(seconds))
    for limit, unit, size in (
        (3600.0, "minute", 60.0),
        (86400.0, "hour", 3600.0),
        (14 * 86400.0, "day", 86400.0),
        (61 * 86400.0, "week", 7 * 86400.0),
        (730 * 86400.0, "month", 30.44 * 86400.0),
        (float("inf"), "year", 365.25 * 86400.0),
    ):
        if s < limit:
            n = int(s // size)
            if n == 0:
                return "just now"
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    raise AssertionError("unreachable")  # pragma: no cover - the last limit is infinite


@dataclass(frozen=True)
class PromptIds:
    """One prompt as token ids.

    ``ids`` is the whole prompt (``prefix_len`` leading ids are identical for every prompt of the
    builder, so their key/value cache can be shared); ``soft`` lists the positions that hold a
    placeholder id and receive the projected interest vectors (in order, one per interest token).
    """

    ids: list[int]
    soft: list[int]
    prefix_len: int


class PromptBuilder:
    """Turns (history, candidates) into token ids for one tokenizer.

    Layout (chat models get the tokenizer's chat template around the user message)::

        <system prompt>
        <user>I will show you a user's recent history and some candidates.
        Taste profile: <soft token(s)>            (only when an interest vector is given)
        Recent history, oldest first:
        - Heat (1995), 3 days ago
        - ...
        Candidates:
        - Toy Story (1995) [A]                    (label_layout="before": "A. Toy Story (1995)")
        - Heat (1995) [B]
        <question></user>
        <assistant>                               -> next-token logits of "A", "B", ...

    Args:
        tokenizer: a Hugging Face tokenizer (``__call__`` with ``add_special_tokens``).
        system_prompt: first message (system role when the template has one).
        question: last line of the user message.
        max_text_chars: item texts longer than this are cut at a word boundary (``...`` added).
        n_labels: how many labels are needed (the largest window).
        labels: label strings to use; ``None`` picks the first of :data:`LABEL_SETS` whose
            labels are distinct single tokens for this tokenizer.
        label_layout: ``"after"`` writes each candidate as ``- Toy Story (1995) [A]``, the label
            after the text; ``"before"`` as ``A. Toy Story (1995)``. After the text, the label
            token's position can already see the candidate it names, so the answer position
            finds the best candidate and copies its label in one attention step; before the
            text, the label must first be carried into the text's positions, a binding that
            SmolLM2-135M does not make and did not learn in LoRA fine-tuning.
    """

    INTRO = "I will show you a user's recent history and some candidates.\n"

    def __init__(
        self,
        tokenizer: Any,
        *,
        system_prompt: str,
        question: str,
        max_text_chars: int,
        n_labels: int,
        labels: Sequence[str] | None = None,
        label_layout: str = "after",
    ) -> None:
        if label_layout not in ("after", "before"):
            raise ConfigError(f"label_layout must be 'after' or 'before', got {label_layout!r}")
        self.tokenizer = tokenizer
        self.label_layout = label_layout
        self.max_text_chars = max_text_chars
        head, tail = self._framing(tokenizer, system_prompt)
        self._head = self._encode(head + self.INTRO)
        self._tail = self._encode("\n" + question + tail)
        # The answer is the first token after the tail: no space after a newline (chat
        # templates end with "assistant\n"), a space after "Answer:" in the plain framing.
        self.answer_prefix = "" if tail[-1:].isspace() else " "
        self.labels, self.label_ids = self._pick_labels(n_labels, labels)
        # Every piece that precedes an item text ends without a space, and item texts are
        # tokenised with their leading space (" Toy Story"): byte-level BPE tokenizers attach a
        # word's space to the word, so the pieces concatenate to exactly the ids the tokenizer
        # gives the whole line. "A. " + "Toy Story" instead gave a lone space token and titles
        # split mid-word ("P", "ul", "p" for "Pulp"), sequences the model never saw in training.
        if label_layout == "before":
            self._label_head = [self._encode(f"{lab}.") for lab in self.labels]
            self._label_tail: list[list[int]] = [[] for _ in self.labels]
        else:
            self._label_head = [self._encode("-") for _ in self.labels]
            self._label_tail = [self._encode(f" [{lab}]") for lab in self.labels]
        self._profile = self._encode("Taste profile: ")
        self._newline = self._encode("\n")
        self._history_header = self._encode("Recent history, oldest first:\n")
        self._no_history = self._encode("Recent history: none.\n")
        self._cand_header = self._encode("Candidates:\n")
        self._dash = self._encode("-")
        self._text_cache: dict[str, list[int]] = {}
        self._age_cache: dict[str, list[int]] = {}
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        # Placeholder id at soft-token positions; its embedding is overwritten, any valid id works.
        self.placeholder_id = int(pad) if pad is not None else 0

    # -- framing ---------------------------------------------------------------------------------
    @staticmethod
    def _framing(tokenizer: Any, system_prompt: str) -> tuple[str, str]:
        """Text before and after the user message (chat template if the tokenizer has one)."""
        if getattr(tokenizer, "chat_template", None):
            messages = [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": _SENTINEL},
            ]
            try:
                text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # some templates reject a system role: fold it into the user turn
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": system_prompt + "\n\n" + _SENTINEL}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            if isinstance(text, str) and text.count(_SENTINEL) == 1:
                head, tail = text.split(_SENTINEL)
                bos = getattr(tokenizer, "bos_token", None)
                # The tokenizer adds no special tokens for us, so a BOS written by the template stays.
                if bos and not head.startswith(bos) and getattr(tokenizer, "add_bos_token", False):
                    head = bos + head
                return head, tail
        return system_prompt + "\n\n", "\nAnswer:"

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _pick_labels(self, n: int, labels: Sequence[str] | None) -> tuple[tuple[str, ...], list[int]]:
        candidates = (tuple(labels),) if labels is not None else LABEL_SETS
        problems = []
        for cand in candidates:
            if len(cand) < n:
                problems.append(f"{cand[:3]}...: only {len(cand)} labels, need {n}")
                continue
            cand = cand[:n]
            ids = [self._encode(self.answer_prefix + lab) for lab in cand]
            if all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == n:
                unk = getattr(self.tokenizer, "unk_token_id", None)
                if unk is None or all(i[0] != unk for i in ids):
                    return tuple(cand), [i[0] for i in ids]
            bad = [lab for lab, i in zip(cand, ids) if len(i) != 1]
            problems.append(
                f"{cand[:3]}...: " + (f"not single tokens: {bad[:5]}" if bad else "labels share a token id")
            )
        raise ConfigError(
            "no label set gives a distinct single token per candidate for this tokenizer ("
            + "; ".join(problems)
            + "); pass labels=... explicitly or lower the window"
        )

    # -- pieces ----------------------------------------------------------------------------------
    def _clip(self, text: str) -> str:
        text = " ".join(str(text).split())  # newlines inside a text would break the list layout
        if len(text) <= self.max_text_chars:
            return text
        cut = text[: self.max_text_chars]
        space = cut.rfind(" ")
        if space > self.max_text_chars // 2:
            cut = cut[:space]
        return cut.rstrip(" ,.;:") + "..."

    def warm(self, texts: Sequence[str]) -> None:
        """Tokenise item texts not seen yet in one batched tokenizer call."""
        new = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        if not new:
            return
        enc = self.tokenizer([" " + self._clip(t) for t in new], add_special_tokens=False)["input_ids"]
        for t, ids in zip(new, enc):
            self._text_cache[t] = list(ids)

    def _text(self, text: str) -> list[int]:
        ids = self._text_cache.get(text)
        if ids is None:
            self.warm([text])
            ids = self._text_cache[text]
        return ids

    def _age(self, seconds: float) -> list[int]:
        words = format_age(seconds)
        ids = self._age_cache.get(words)
        if ids is None:
            ids = self._age_cache[words] = self._encode(", " + words + "\n")
        return ids

    # -- prompts ---------------------------------------------------------------------------------
    @property
    def prefix_ids(self) -> list[int]:
        """Ids every prompt starts with (the shared prefix)."""
        return list(self._head)

    def build(
        self,
        history: Sequence[str],
        ages: Sequence[float],
        candidates: Sequence[str],
        n_soft: int,
    ) -> PromptIds:
        """Token ids of one prompt.

        ``history`` item texts oldest first with ``ages`` (seconds before the ranking time, same
        length); ``candidates`` are labelled in the given order (at most ``len(self.labels)``);
        ``n_soft`` placeholder positions for interest tokens (0 = no taste-profile line).
        """
        if len(candidates) > len(self.labels):
            raise ConfigError(f"at most {len(self.labels)} candidates per prompt, got {len(candidates)}")
        ids = list(self._head)
        soft: list[int] = []
        if n_soft:
            ids += self._profile
            soft = list(range(len(ids), len(ids) + n_soft))
            ids += [self.placeholder_id] * n_soft
            ids += self._newline
        if len(history):
            ids += self._history_header
            for text, age in zip(history, ages):
                ids += self._dash
                ids += self._text(text)
                ids += self._age(age)
        else:
            ids += self._no_history
        ids += self._cand_header
        for j, text in enumerate(candidates):
            ids += self._label_head[j]
            ids += self._text(text)
            ids += self._label_tail[j]
            ids += self._newline
        ids += self._tail
        return PromptIds(ids, soft, len(self._head))

    def render(self, prompt: PromptIds) -> str:
        """The prompt as text (soft positions shown as ``<interest>``), for inspection and logs."""
        marks = set(prompt.soft)
        parts: list[str] = []
        run: list[int] = []
        for pos, tid in enumerate(prompt.ids):
            if pos in marks:
                if run:
                    parts.append(self.tokenizer.decode(run))
                    run = []
                parts.append("<interest>")
            else:
                run.append(tid)
        if run:
            parts.append(self.tokenizer.decode(run))
        return "".join(parts)
