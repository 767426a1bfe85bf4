"""Text encoders: hashing encoder, sentence encoder with its disk cache (fake model), real MiniLM (slow)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from driftrank.errors import ConfigError, DataError, ModelFileError
from driftrank.rerank._encoder import (
    CachedEncoder,
    EmbeddingCache,
    HashingEncoder,
    HashingEncoderConfig,
    SentenceEncoder,
    SentenceEncoderConfig,
    TextEncoder,
    default_cache_dir,
    default_device,
    default_model_path,
    text_hashes,
)

TEXTS = [
    "Star Wars (1977) Genres: Action, Adventure, Sci-Fi.",
    "Return of the Jedi (1983) Genres: Action, Adventure, Sci-Fi.",
    "Sense and Sensibility (1995) Genres: Drama, Romance.",
    "Haunted Crypt 7 Genres: horror.",
    "",
]


class CountingModel:
    """Stands in for a SentenceTransformer: deterministic vectors, counts every call."""

    def __init__(self, dim: int = 12) -> None:
        self.dim = dim
        self.calls: list[list[str]] = []
        self._hash = HashingEncoder(HashingEncoderConfig(dim=dim, seed=3))

    def get_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
        self.calls.append(list(texts))
        # Deliberately not unit-norm (and +1 so empty texts are not zero): the encoder must normalise.
        return 3.0 * self._hash.encode(texts) + 1.0

    @property
    def n_texts(self) -> int:
        return sum(len(c) for c in self.calls)


def fake_encoder(
    model: CountingModel, cache_dir: Path, name: str = "fake-model", **kw: Any
) -> SentenceEncoder:
    cfg = SentenceEncoderConfig(model=name, cache_dir=str(cache_dir), progress=False, **kw)
    return SentenceEncoder(cfg, model=model)


# ---------------------------------------------------------------------- hashing encoder
def test_hashing_encoder_shape_norm_and_protocol() -> None:
    enc = HashingEncoder(HashingEncoderConfig(dim=64))
    assert isinstance(enc, TextEncoder)
    v = enc.encode(TEXTS)
    assert v.shape == (5, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v[:4], axis=1), 1.0, rtol=1e-6)
    assert np.all(v[4] == 0)  # an empty text has no feature at all


def test_hashing_encoder_is_deterministic_and_seeded() -> None:
    a = HashingEncoder().encode(TEXTS)
    b = HashingEncoder().encode(list(reversed(TEXTS)))[::-1]
    np.testing.assert_array_equal(a, b)  # same text, same vector, whatever the batch
    c = HashingEncoder(HashingEncoderConfig(seed=1)).encode(TEXTS)
    assert not np.allclose(a[:4], c[:4])
    assert HashingEncoder().name != HashingEncoder(HashingEncoderConfig(seed=1)).name


def test_hashing_encoder_shared_words_are_closer() -> None:
    v = HashingEncoder().encode(TEXTS[:4])
    sims = v @ v.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    assert sims[0, 1] > sims[0, 3] + 0.2
    # Character n-grams relate inflections that share no whole word.
    w = HashingEncoder().encode(["haunting ghosts", "haunted ghost", "sunny beach"])
    assert w[0] @ w[1] > w[0] @ w[2] + 0.1
    no_chars = HashingEncoder(HashingEncoderConfig(char_ngrams=None)).encode(
        ["haunting ghosts", "haunted ghost"]
    )
    assert abs(no_chars[0] @ no_chars[1]) < 0.1  # words alone do not see it


def test_hashing_config_validation() -> None:
    with pytest.raises(ConfigError, match="dim"):
        HashingEncoderConfig(dim=1)
    with pytest.raises(ConfigError, match="word_ngrams"):
        HashingEncoderConfig(word_ngrams=(2, 1))
    with pytest.raises(ConfigError, match="char_weight"):
        HashingEncoderConfig(char_weight=-1.0)
    cfg = HashingEncoderConfig(word_ngrams=[1, 3], char_ngrams=None)  # type: ignore[arg-type]
    assert cfg.word_ngrams == (1, 3)
    assert HashingEncoder(cfg).encode(["a b c"]).shape == (1, 256)


def test_encoders_reject_bad_texts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="single str"):
        HashingEncoder().encode("one text")
    with pytest.raises(DataError, match=r"texts\[1\] must be a str, got int"):
        HashingEncoder().encode(["a", 3])  # type: ignore[list-item]
    with pytest.raises(DataError, match="single str"):
        fake_encoder(CountingModel(), tmp_path).encode("x")


# ---------------------------------------------------------------------- the cache
def test_cache_hit_does_not_call_the_model(tmp_path: Path) -> None:
    model = CountingModel()
    first = fake_encoder(model, tmp_path).encode(TEXTS)
    assert len(model.calls) == 1 and model.n_texts == 5
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    # A fresh encoder object (a second fit, another process) with the same model and folder.
    again = fake_encoder(model, tmp_path).encode(TEXTS)
    assert len(model.calls) == 1
    np.testing.assert_array_equal(first, again)
    # Order and duplicates of the request do not matter.
    mixed = fake_encoder(model, tmp_path).encode([TEXTS[2], TEXTS[0], TEXTS[2]])
    assert len(model.calls) == 1
    np.testing.assert_array_equal(mixed, first[[2, 0, 2]])


def test_cache_fully_hit_never_loads_the_model(tmp_path: Path) -> None:
    model = CountingModel()
    ref = fake_encoder(model, tmp_path).encode(TEXTS)
    # No model object: loading "fake-model" would fail, so success proves the model is not loaded.
    cold = SentenceEncoder(SentenceEncoderConfig(model="fake-model", cache_dir=str(tmp_path), progress=False))
    np.testing.assert_array_equal(cold.encode(TEXTS[:3]), ref[:3])
    assert cold.dim == 12
    assert cold.model_calls == 0


def test_partial_hits_encode_only_missing_texts_once(tmp_path: Path) -> None:
    model = CountingModel()
    enc = fake_encoder(model, tmp_path)
    enc.encode(TEXTS[:2])
    out = enc.encode([TEXTS[1], "new one", TEXTS[0], "new one", "another"])
    assert model.calls[-1] == ["new one", "another"] or sorted(model.calls[-1]) == ["another", "new one"]
    assert model.n_texts == 4
    np.testing.assert_array_equal(out[1], out[3])
    direct = fake_encoder(CountingModel(), tmp_path / "other").encode(["new one", TEXTS[1]])
    np.testing.assert_allclose(out[[1, 0]], direct, rtol=1e-6)


def test_cache_is_keyed_by_model_identity(tmp_path: Path) -> None:
    model = CountingModel()
    fake_encoder(model, tmp_path, name="model-a").encode(TEXTS)
    fake_encoder(model, tmp_path, name="model-b").encode(TEXTS)
    assert len(model.calls) == 2
    fake_encoder(model, tmp_path, name="model-a", max_seq_length=16).encode(TEXTS)
    assert len(model.calls) == 3  # truncation changes the output, hence the key
    fake_encoder(model, tmp_path, name="model-a", batch_size=7).encode(TEXTS)
    assert len(model.calls) == 3  # batch size does not


def test_cache_key_does_not_depend_on_load_order(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden": 12}')
    model = CountingModel()
    loaded_first = SentenceEncoder(
        SentenceEncoderConfig(model=str(folder), cache_dir=str(tmp_path / "c"), progress=False), model=model
    )
    assert loaded_first.dim == 12  # touches the model before the name is ever read
    loaded_first.encode(TEXTS)
    named_first = SentenceEncoder(SentenceEncoderConfig(model=str(folder), cache_dir=str(tmp_path / "c")))
    assert named_first.name == loaded_first.name
    assert named_first.name.startswith(f"sentence-transformers:{folder.resolve()}#")
    named_first.encode(TEXTS)  # all cached: would try to load a model from the folder otherwise
    assert named_first.model_calls == 0
    # Changing the model folder changes the key.
    (folder / "config.json").write_text('{"hidden": 13}')
    assert SentenceEncoder(SentenceEncoderConfig(model=str(folder))).name != named_first.name


def test_cache_files_are_safetensors_written_atomically(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    enc = fake_encoder(CountingModel(), tmp_path)
    enc.encode(TEXTS)
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(folders) == 1
    files = sorted(p.name for p in folders[0].iterdir())
    assert not [f for f in files if f.endswith(".tmp") or f.startswith(".")]
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) == 1 and "model.json" in files
    info = json.loads((folders[0] / "model.json").read_text())
    assert info["dim"] == 12 and info["model"] == enc.name
    arrays = load_file(str(folders[0] / shards[0]))
    assert arrays["hashes"].shape == (5, 16) and arrays["vectors"].shape == (5, 12)
    stored = {bytes(h) for h in arrays["hashes"]}
    assert stored == {bytes(h) for h in text_hashes(TEXTS)}


def test_cache_disabled_always_calls_model(tmp_path: Path) -> None:
    model = CountingModel()
    enc = fake_encoder(model, tmp_path, cache=False)
    enc.encode(TEXTS)
    enc.encode(TEXTS)
    assert len(model.calls) == 2
    assert not any(tmp_path.iterdir())


def test_cache_compacts_many_shards(tmp_path: Path) -> None:
    model = CountingModel()
    enc = fake_encoder(model, tmp_path)
    texts = [f"text number {i}" for i in range(40)]
    ref = [enc.encode([t])[0] for t in texts]
    cache = EmbeddingCache(tmp_path, enc.name)
    assert len(list(cache.folder.glob("*.safetensors"))) <= 17
    assert len(cache) == 40
    calls = len(model.calls)
    np.testing.assert_array_equal(fake_encoder(model, tmp_path).encode(texts), np.stack(ref))
    assert len(model.calls) == calls


def test_damaged_shard_is_ignored_with_a_warning(tmp_path: Path) -> None:
    model = CountingModel()
    enc = fake_encoder(model, tmp_path)
    ref = enc.encode(TEXTS)
    shard = next(EmbeddingCache(tmp_path, enc.name).folder.glob("*.safetensors"))
    shard.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unreadable"):
        again = fake_encoder(model, tmp_path).encode(TEXTS)
    assert len(model.calls) == 2  # re-encoded rather than trusting the damaged file
    np.testing.assert_allclose(again, ref, rtol=1e-6)


def test_cache_refuses_mixed_dimensions(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "m")
    cache.store(text_hashes(["a"]), np.ones((1, 4), np.float32))
    with pytest.raises(ModelFileError, match="4-d"):
        cache.store(text_hashes(["b"]), np.ones((1, 5), np.float32))


def test_cached_encoder_wraps_any_encoder(tmp_path: Path) -> None:
    class Spy:
        def __init__(self) -> None:
            self.inner = HashingEncoder(HashingEncoderConfig(dim=32))
            self.seen = 0

        @property
        def name(self) -> str:
            return self.inner.name

        @property
        def dim(self) -> int:
            return 32

        def encode(self, texts: Sequence[str]) -> np.ndarray:
            self.seen += len(texts)
            return self.inner.encode(texts)

    spy = Spy()
    enc = CachedEncoder(spy, tmp_path)
    assert isinstance(enc, TextEncoder)
    a = enc.encode(TEXTS[:4])
    b = CachedEncoder(spy, tmp_path).encode(TEXTS[:4])
    assert spy.seen == 4
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, spy.inner.encode(TEXTS[:4]), rtol=1e-6, atol=1e-7)


def test_encoder_rejects_bad_model_output(tmp_path: Path) -> None:
    class NaNModel(CountingModel):
        def encode(self, texts: Sequence[str], **kwargs: Any) -> np.ndarray:
            return np.full((len(texts), self.dim), np.nan)

    with pytest.raises(DataError, match="non-finite"):
        fake_encoder(NaNModel(), tmp_path).encode(["x"])
    assert not list(tmp_path.rglob("*.safetensors"))


# ---------------------------------------------------------------------- configuration
def test_sentence_config_validation_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size must be a positive integer, got 0"):
        SentenceEncoderConfig(batch_size=0)
    with pytest.raises(ConfigError, match="max_seq_length"):
        SentenceEncoderConfig(max_seq_length=-1)
    with pytest.raises(ConfigError, match="name"):
        SentenceEncoder(model=CountingModel())  # a loaded model needs a name for the cache
    monkeypatch.setenv("DRIFTRANK_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings"
    monkeypatch.delenv("DRIFTRANK_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "driftrank" / "embeddings"
    path = default_model_path()
    assert (path / "modules.json").is_file() and (path / "model.safetensors").is_file()
    enc = SentenceEncoder(SentenceEncoderConfig(cache_dir=str(tmp_path)))
    assert enc.model_ref == str(path)
    assert enc.name.startswith(f"sentence-transformers:{path}#")
    assert enc._model is None  # naming the model does not load it


def test_default_device_prefers_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert default_device() == "cpu"
    assert SentenceEncoder(SentenceEncoderConfig(device="cuda:1")).device == "cuda:1"


# ---------------------------------------------------------------------- the real model
@pytest.mark.slow
def test_real_minilm_on_ml100k_items(ml100k: Any, tmp_path: Path) -> None:
    enc = SentenceEncoder(SentenceEncoderConfig(cache_dir=str(tmp_path), device="cpu", progress=False))
    texts = ml100k.item_texts
    v = enc.encode(texts)
    assert v.shape == (ml100k.n_items, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert enc.model_calls == 1
    titles = ml100k.items["title"].to_list()

    def idx(prefix: str) -> int:
        return next(i for i, t in enumerate(titles) if t.startswith(prefix))

    star_wars, jedi, empire = idx("Star Wars"), idx("Return of the Jedi"), idx("Empire Strikes Back")
    sense = idx("Sense and Sensibility")
    assert v[star_wars] @ v[empire] > v[star_wars] @ v[sense] + 0.1
    assert v[star_wars] @ v[jedi] > v[star_wars] @ v[sense] + 0.1
    # Nearest neighbours of Star Wars (excluding itself) include one of its sequels.
    near = np.argsort(-(v @ v[star_wars]))[1:11]
    assert {jedi, empire} & set(near.tolist())
    # A second encoder object finds everything in the cache and never loads the model.
    again = SentenceEncoder(SentenceEncoderConfig(cache_dir=str(tmp_path), device="cpu", progress=False))
    np.testing.assert_array_equal(again.encode(texts[:50]), v[:50])
    assert again.model_calls == 0 and again._model is None
