"""The engine's LLM stage (pipeline ``hybrid-llm``) with a tiny random Llama on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import small_engine_config
from driftrank.data import Dataset
from driftrank.engine import Engine, EngineConfig, LLMStageConfig
from driftrank.errors import ConfigError
from driftrank.rerank import LLMReranker, LLMRerankerConfig
from test_llm_reranker import make_lm


def _llm_config(**changes: object) -> LLMStageConfig:
    rr = LLMRerankerConfig(
        device="cpu", batch_size=8, train_batch_size=8, max_history=4, max_text_chars=24, max_steps=3
    )
    base: dict[str, object] = {"reranker": rr, "top": 6, "train_positions": 1, "train_users": 24}
    base.update(changes)
    return LLMStageConfig(**base)  # type: ignore[arg-type]


def _tiny_llm(tok, config: EngineConfig) -> LLMReranker:
    return LLMReranker(config.llm.reranker, model=make_lm(tok), tokenizer=tok)


@pytest.fixture(scope="module")
def tok():
    from test_llm_reranker import _bpe_tokenizer

    return _bpe_tokenizer()


@pytest.fixture(scope="module")
def data(small_drifting: Dataset) -> Dataset:
    return small_drifting


@pytest.fixture(scope="module")
def config() -> EngineConfig:
    return small_engine_config(llm=_llm_config())


@pytest.fixture(scope="module")
def engine(config: EngineConfig, data: Dataset, tok) -> Engine:
    return Engine(config, llm=_tiny_llm(tok, config)).fit(data)


def test_llm_is_a_fusion_signal_of_the_top_candidates(engine: Engine, data: Dataset) -> None:
    st = engine._require()
    users = np.arange(5, dtype=np.int64)
    cands = engine._candidates(users, None, exclude=engine._seen_matrix(users))
    inputs = engine._fusion_input(cands, None)
    llm = inputs.signals["llm"]
    for j in range(len(users)):
        sl = cands.of(j)
        scored = np.isfinite(llm[sl])
        assert scored.sum() == min(6, sl.stop - sl.start)
        # The scored rows are the re-ranker's top 6.
        rr = inputs.signals["rerank"][sl]
        assert set(np.flatnonzero(scored)) == set(np.argsort(-rr, kind="stable")[:6])
    assert "llm" in engine._fuser.gated_groups
    res = engine.rank(st.user_ids.ids[0].item(), k=5)
    assert "llm" in res.contributions and len(res.item_ids) == 5
    report = engine.fit_report["llm"]
    assert report["examples"] > 0 and report["validation_examples"] >= 0


def test_fine_tuning_examples_hold_the_target_and_no_later_event(engine: Engine, data: Dataset) -> None:
    split_part = data  # any dataset works for building examples; the targets are its last events
    examples = engine._llm.examples(engine, split_part, seed=0)
    seqs = split_part.sequences
    titles = engine._titles(engine._require())
    assert examples
    for ex in examples[:20]:
        q = ex.query
        u = int(q.key)
        items, _ = seqs.user(u)
        target_title = q.candidates[ex.target]
        assert target_title == titles[int(items[-1])]
        assert len(q.candidates) == 6
        assert q.history[-1] == titles[int(items[-2])]
        assert q.interest is not None and q.interest.shape[0] == engine._interest.interest.n_scales


def test_batch_equals_single_with_llm(engine: Engine, data: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [engine._require().user_ids.ids[u].item() for u in range(4)]
    batch = engine.rank_batch(ids, k=5)
    for uid, b in zip(ids, batch, strict=True):
        one = engine.rank(uid, k=5)
        np.testing.assert_array_equal(one.item_ids, b.item_ids)
        np.testing.assert_allclose(one.scores, b.scores, rtol=1e-4, atol=1e-5)
    # workers: the language model scores one batch at a time, so the batch runs in one part
    import concurrent.futures

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("rank_batch split a batch of an engine with the LLM stage")

    monkeypatch.setattr(concurrent.futures, "ThreadPoolExecutor", no_pool)
    every = [x.item() for x in engine._require().user_ids.ids]
    every += every[: max(0, 64 - len(every))]  # enough users for two parts of 32
    assert len(every) >= 64
    many = engine.rank_batch(every, k=5, workers=2)
    assert [r.user for r in many] == every
    for a, b in zip(batch, many[:4], strict=True):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)


def test_save_load_with_llm_ranks_identically(
    engine: Engine, config: EngineConfig, tok, tmp_path: Path
) -> None:
    folder = engine.save(tmp_path / "m")
    loaded = Engine.load(folder, llm=_tiny_llm(tok, config))
    uid = engine._require().user_ids.ids[3].item()
    a, b = engine.rank(uid, k=8), loaded.rank(uid, k=8)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_llm_config_round_trip_and_validation() -> None:
    cfg = small_engine_config(llm=_llm_config(top=8))
    again = EngineConfig.from_dict(cfg.to_dict())
    assert again.llm == cfg.llm and again.llm.reranker.max_steps == 3
    assert EngineConfig(llm="default").llm == LLMStageConfig()
    with pytest.raises(ConfigError, match="fusion='gated' or 'linear'"):
        small_engine_config(llm=_llm_config(), fusion="rrf")
    with pytest.raises(ConfigError, match=r"llm\.top"):
        LLMStageConfig(top=1)
    with pytest.raises(ConfigError, match=r"config\.llm is None"):
        Engine(small_engine_config(), llm=object())


def test_zero_shot_stage_skips_fine_tuning(data: Dataset, tok) -> None:
    cfg = small_engine_config(llm=_llm_config(train_positions=0))
    eng = Engine(cfg, llm=_tiny_llm(tok, cfg)).fit(data)
    assert eng.fit_report["llm"]["examples"] == 0
    assert not eng._llm.llm.fitted_


def test_scores_computed_elsewhere_replay_exactly(
    config: EngineConfig, data: Dataset, tok, tmp_path: Path
) -> None:
    """The split the GPU benchmark uses: record the LM's inputs, score them in another process
    (here: the same tiny model outside the engine), replay the scores through a fresh fit."""
    from driftrank.rerank._llm_io import (
        LLMRecorder,
        LLMScoreTable,
        load_llm_batch,
        query_key,
        save_llm_batch,
    )

    rec = LLMRecorder(config.llm.reranker)
    uid = [data.user_ids.ids[u].item() for u in range(6)]
    recorded = Engine(config, llm=rec).fit(data)
    recorded.rank_batch(uid, k=5)
    path = save_llm_batch(tmp_path / "jobs.npz", queries=list(rec.queries.values()), examples=rec.examples)
    queries, examples, _ = load_llm_batch(path)
    assert [query_key(q) for q in queries] == list(rec.queries)
    assert len(examples) == len(rec.examples) and examples[0].target == rec.examples[0].target

    live = Engine(config, llm=_tiny_llm(tok, config)).fit(data)
    outside = _tiny_llm(tok, config)
    outside.config = live._llm.llm.config  # the interest shape the engine set
    n_val = live.fit_report["llm"]["validation_examples"]
    outside.fit(examples[: len(examples) - n_val], validation=examples[len(examples) - n_val :] or None)
    LLMScoreTable.save(tmp_path / "scores.npz", [query_key(q) for q in queries], outside.score(queries))
    replayed = Engine(config, llm=LLMScoreTable.load(tmp_path / "scores.npz")).fit(data)
    # The LM's scores differ in the last float32 bits with the batch they were computed in
    # (here all queries at once, in the engine each step's users), which moves the fused
    # scores by a constant; rankings and per-signal contributions are the same.
    for a, b in zip(live.rank_batch(uid, k=5), replayed.rank_batch(uid, k=5), strict=True):
        np.testing.assert_array_equal(a.item_ids, b.item_ids)
        assert np.ptp(a.scores - b.scores) < 1e-5 and np.abs(a.scores - b.scores).max() < 1e-2
        for g in a.contributions:
            np.testing.assert_allclose(a.contributions[g], b.contributions[g], atol=1e-6)
    with pytest.raises(Exception, match="no stored LLM score"):
        LLMScoreTable({}).score(queries[:1])


def test_hybrid_llm_pipeline_builds_from_its_toml() -> None:
    from driftrank.bench._pipelines import PipelineSpec, available, build_pipeline

    assert "hybrid-llm" in available()
    plain = build_pipeline(PipelineSpec("hybrid-llm", "hybrid-llm", {}), seed=3)
    assert plain.config.llm == LLMStageConfig() and plain.config.seed == 3
    root = Path(__file__).resolve().parents[1]
    spec = PipelineSpec.from_toml(root / "benchmarks" / "configs" / "hybrid-llm.toml")
    ranker = build_pipeline(spec, seed=0)
    assert ranker.config.llm.train_positions == 4 and ranker.config.llm.reranker.epochs == 3


def test_cold_start_calls_work_with_the_llm_stage(engine: Engine, data: Dataset) -> None:
    items = [data.item_ids.ids[i].item() for i in (1, 5, 9)]
    new = engine.rank(90_001, history=items, k=5)
    assert len(new.item_ids) == 5 and not set(new.item_ids.tolist()) & set(items)
    assert np.isfinite(new.contributions["llm"]).any()
    text = engine.rank(text="topic 1 items", k=5)
    assert len(text.item_ids) == 5
    engine.add_items([{"item_id": 10_001, "title": "A brand new item about topic 1"}])
    again = engine.rank(data.user_ids.ids[2].item(), k=5)
    assert len(again.item_ids) == 5 and "llm" in again.contributions
    why = engine.explain(data.user_ids.ids[2].item(), k=3)
    assert len(why.reasons) == 3 and "llm" in why.ranking.contributions
