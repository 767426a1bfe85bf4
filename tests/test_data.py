"""Loaders on the real files, on official-format fixtures, and on broken input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from driftrank.data import ColumnMap, Dataset, load_dataset, load_interactions, make_drifting, read_table
from driftrank.errors import DataError, DataNotFoundError, UnknownIdError


# ---------------------------------------------------------------- real data
def test_ml100k_counts_and_text(ml100k: Dataset) -> None:
    assert (ml100k.n_users, ml100k.n_items, ml100k.n_interactions) == (943, 1682, 100_000)
    star_wars = ml100k.item_ids.index(50)
    row = ml100k.items.row(star_wars, named=True)
    assert row["title"] == "Star Wars (1977)"
    assert row["year"] == 1977
    assert set(row["genres"]) == {"Action", "Adventure", "Romance", "Sci-Fi", "War"}
    assert row["text"].startswith("Star Wars (1977) Genres:")
    assert ml100k.users is not None
    u1 = ml100k.users.row(ml100k.user_ids.index(1), named=True)
    assert (u1["age"], u1["gender"], u1["occupation"]) == (24, "M", "technician")


def test_ml_small_counts_and_tags(ml_small: Dataset) -> None:
    assert (ml_small.n_users, ml_small.n_items, ml_small.n_interactions) == (610, 9724, 100_836)
    toy = ml_small.items.row(ml_small.item_ids.index(1), named=True)
    assert toy["title"] == "Toy Story (1995)"
    assert "pixar" in toy["tags"]
    assert "Tags: " in toy["text"]
    assert ml_small.describe()["has_tags"] is True


def test_sequences_sorted_with_stable_ties(ml100k: Dataset) -> None:
    seq = ml100k.sequences
    assert seq.indptr[-1] == ml100k.n_interactions
    rows = ml100k.interactions["row"].to_numpy()
    for u in range(0, ml100k.n_users, 97):
        lo, hi = seq.indptr[u], seq.indptr[u + 1]
        t = seq.timestamps[lo:hi]
        assert np.all(np.diff(t) >= 0)
        same = np.diff(t) == 0
        assert np.all(np.diff(rows[lo:hi])[same] > 0)  # ties keep the file order


def test_csr_and_describe(ml100k: Dataset) -> None:
    m = ml100k.to_csr()
    assert m.shape == (943, 1682)
    assert m.sum() == pytest.approx(100_000)
    d = ml100k.describe()
    assert d["n_distinct_pairs"] == 100_000
    assert 214 < d["time_span_days"] < 216
    assert d["history_length"]["min"] == 20


# ---------------------------------------------------------------- official-format fixtures
def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))


def test_official_ml100k_layout(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    _write(d / "u.data", "1\t10\t5\t100\n2\t10\t3\t50\n1\t20\t4\t90\n")
    flags = ["0"] * 19
    f1 = flags.copy()
    f1[1] = f1[15] = "1"  # Action, Sci-Fi
    f2 = flags.copy()
    f2[8] = "1"  # Drama
    _write(
        d / "u.item",
        f"10|Café Society (1995)|01-Jan-1995||http://x|{'|'.join(f1)}\n20|Other (1990)|01-Jan-1990||http://y|{'|'.join(f2)}\n",
        encoding="latin-1",
    )
    _write(d / "u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
    ds = load_dataset("ml-100k", tmp_path, download=False)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 2, 3)
    cafe = ds.items.row(ds.item_ids.index(10), named=True)
    assert cafe["title"] == "Café Society (1995)"
    assert cafe["genres"] == ["Action", "Sci-Fi"]
    items, times = ds.sequences.user(ds.user_ids.index(1))
    assert ds.item_ids.ids[items].tolist() == [20, 10]  # sorted by time
    assert times.tolist() == [90.0, 100.0]


def test_official_ml1m_layout(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    _write(d / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    _write(
        d / "movies.dat",
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::Animation|Children's|Musical\n",
        "latin-1",
    )
    _write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = load_dataset("ml-1m", tmp_path, download=False)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 2, 3)
    peach = ds.items.row(ds.item_ids.index(661), named=True)
    assert peach["genres"] == ["Animation", "Children's", "Musical"]
    assert peach["year"] == 1996
    assert (
        ds.users is not None
        and ds.users.row(ds.user_ids.index(2), named=True)["occupation"] == "self-employed"
    )


def test_official_ml_latest_small_layout(tmp_path: Path) -> None:
    d = tmp_path / "ml-latest-small"
    _write(
        d / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,3.5,964981247\n2,1,5.0,964982224\n",
    )
    _write(
        d / "movies.csv",
        'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,"Heat, The (1995)",(no genres listed)\n',
    )
    _write(d / "tags.csv", "userId,movieId,tag,timestamp\n1,1,Pixar,1\n2,1,pixar,2\n2,1,fun,3\n")
    ds = load_dataset("ml-latest-small", tmp_path, download=False)
    toy = ds.items.row(ds.item_ids.index(1), named=True)
    assert toy["tags"] == ["pixar", "fun"]  # most frequent first, case-folded
    heat = ds.items.row(ds.item_ids.index(2), named=True)
    assert heat["title"] == "Heat, The (1995)"
    assert heat["genres"] == []


def test_named_dataset_not_found_names_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTRANK_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("DRIFTRANK_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataNotFoundError, match="DRIFTRANK_DATA_HOME"):
        load_dataset("ml-1m", download=False)
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("ml-99m")


def test_data_home_env_resolution(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTRANK_DATA_HOME", str(data_home))
    assert load_dataset("ml-100k", download=False).n_users == 943


# ---------------------------------------------------------------- generic loader
def test_generic_loader_string_ids_and_datetimes(tmp_path: Path) -> None:
    p = tmp_path / "log.tsv"
    _write(
        p,
        "customer\tsku\twhen\tqty\nc1\tA-1\t2024-01-02 10:00:00\t2\nc1\tB-2\t2024-01-01 09:00:00\t1\nc2\tA-1\t2024-01-03 00:00:00\t1\n",
    )
    items = tmp_path / "items.csv"
    _write(items, "sku,name,category\nA-1,Red shoe,Shoes|Red\nB-2,Blue hat,Hats\n")
    ds = load_interactions(p, items, columns="user=customer,item=sku,time=when,weight=qty")
    assert ds.n_users == 2 and ds.n_items == 2
    items_u, times = ds.sequences.user(ds.user_ids.index("c1"))
    assert ds.item_ids.ids[items_u].tolist() == ["B-2", "A-1"]
    assert times[0] == pytest.approx(1704099600.0)
    assert ds.weights.sum() == 4
    shoe = ds.items.row(ds.item_ids.index("A-1"), named=True)
    assert shoe["title"] == "Red shoe" and shoe["genres"] == ["Shoes", "Red"]


def test_generic_loader_detects_headers_and_millis(tmp_path: Path) -> None:
    p = tmp_path / "events.csv"
    _write(p, "userId;movieId;rating;timestamp\n7;3;4.5;1600000000000\n7;4;2;1600000001000\n")
    ds = load_interactions(p)
    assert ds.timestamps.tolist() == [1_600_000_000.0, 1_600_000_001.0]
    assert ds.item_ids.is_integer and ds.user_ids.ids.tolist() == [7]


def test_generic_loader_frames_pandas_and_parquet(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [5, 6, 5], "timestamp": [3, 4, 5]})
    ds = load_interactions(frame)
    assert ds.n_interactions == 3
    pq = tmp_path / "x.parquet"
    pl.from_pandas(frame).write_parquet(pq)
    assert load_interactions(pq).n_interactions == 3


def test_column_map_parse() -> None:
    cm = ColumnMap.parse("user=u, item=i, time=t, item_text=title+plot")
    assert (cm.user, cm.item, cm.time, cm.item_text) == ("u", "i", "t", ("title", "plot"))
    with pytest.raises(DataError, match="unknown key"):
        ColumnMap.parse({"usr": "u"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("user_id,item_id\n1,2\n", "cannot find the time column"),
        ("user_id,item_id,timestamp\n1,2,100\n,3,101\n", r"'user_id' has a missing id at data row 2"),
        (
            "user_id,item_id,timestamp\n1,2,100\n1,3,yesterday-ish\n",
            r"unparsable timestamp 'yesterday-ish' at data row 2",
        ),
        ("user_id,item_id,timestamp\n1,2,100\n1,3,\n", "missing timestamp at data row 2"),
        (
            "user_id,item_id,timestamp,rating\n1,2,100,5\n1,3,101,lots\n",
            r"'rating' has a non-numeric value 'lots' at data row 2",
        ),
        ("user_id,item_id,timestamp\n1.0,2,100\nnan,3,101\n", "missing id at data row 2"),
    ],
)
def test_broken_interaction_files(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        load_interactions(p)
    if content:
        assert "bad.csv" in str(info.value)


def test_items_missing_from_item_table(tmp_path: Path) -> None:
    inter = tmp_path / "i.csv"
    _write(inter, "user_id,item_id,timestamp\n1,2,100\n1,3,101\n")
    items = tmp_path / "items.csv"
    _write(items, "item_id,title\n2,Two\n")
    with pytest.raises(DataError, match=r"missing from the item table.*first 3"):
        load_interactions(inter, items)
    ds = load_interactions(inter, items, missing_items="keep")
    assert ds.items.row(ds.item_ids.index(3), named=True)["text"] == ""


def test_duplicates_kept_unless_collapsed(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    _write(p, "user_id,item_id,timestamp\n1,2,100\n1,2,150\n1,3,120\n")
    assert load_interactions(p).n_interactions == 3
    assert load_interactions(p, collapse_duplicates=True).n_interactions == 2


def test_read_table_sniffs_double_colon(tmp_path: Path) -> None:
    p = tmp_path / "r.dat"
    _write(p, "1::10::5::100\n2::11::3::101\n")
    frame = read_table(p)
    assert frame.shape == (2, 4)
    ds = load_interactions(p)
    assert ds.n_interactions == 2 and ds.interactions["rating"].to_list() == [5.0, 3.0]


def test_unknown_ids_raise() -> None:
    ds = make_drifting(n_users=10, n_items=20, n_topics=2, events_per_user=(4, 6))
    with pytest.raises(UnknownIdError, match="unknown user id 'nobody'"):
        ds.user_ids.index("nobody")
    assert ds.item_ids.get(10_000) == -1


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_seeded_and_drifts() -> None:
    a = make_drifting(n_users=30, n_items=60, n_topics=3, seed=5)
    b = make_drifting(n_users=30, n_items=60, n_topics=3, seed=5)
    c = make_drifting(n_users=30, n_items=60, n_topics=3, seed=6)
    assert a.interactions.equals(b.interactions)
    assert not a.interactions.equals(c.interactions)
    topics, item_topic = a.meta["topics"], a.meta["item_topic"]
    late = early = 0
    for u in range(a.n_users):
        items, _ = a.sequences.user(u)
        half = len(items) // 2
        early += np.mean(item_topic[items[:half]] == topics[u, 0])
        late += np.mean(item_topic[items[half:]] == topics[u, 1])
    assert early / a.n_users > 0.8 and late / a.n_users > 0.8
    assert all(t.split()[0] for t in a.item_texts)


def test_bad_date_string_reports_its_row(tmp_path: Path) -> None:
    p = tmp_path / "dates.csv"
    _write(p, "user,item,date\na,x,2024-01-01\na,y,2024-01-02\nb,x,2024-13-45\n")
    with pytest.raises(DataError, match=r"unparsable timestamp '2024-13-45' at data row 3"):
        load_interactions(p)


def test_items_without_text_are_warned_about_once_with_what_to_pass() -> None:
    import warnings

    inter = pl.DataFrame({"user": [1, 1, 2], "item": ["a", "b", "a"], "ts": [1, 2, 3]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_interactions(inter)
    assert len(caught) == 1 and "no item table" in str(caught[0].message)
    assert "items=FILE" in str(caught[0].message) and "--items" in str(caught[0].message)
    with pytest.warns(UserWarning, match="1 of 2 items have no title or text"):
        load_interactions(inter, pl.DataFrame({"item": ["a", "b"], "title": ["A", ""]}))
    with pytest.warns(UserWarning, match="no item has a title or text"):
        load_interactions(inter, pl.DataFrame({"item": ["a", "b"], "price": [1.0, 2.0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # complete texts: nothing to say
        load_interactions(inter, pl.DataFrame({"item": ["a", "b"], "title": ["A", "B"]}))


def test_ml1m_five_core_layout_loads_as_the_named_set(data_home: Path) -> None:
    ds = load_dataset("ml-1m", data_home, download=False)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (6040, 3416, 999_611)
    assert ds.sequences.lengths().min() >= 18 and ds.users is not None
    star_wars = ds.items.filter(pl.col("item_id") == 260)
    assert star_wars["title"].item() == "Star Wars: Episode IV - A New Hope (1977)"
    assert "Sci-Fi" in star_wars["genres"].item().to_list()
    from driftrank.data._movielens import ML1M_OCCUPATIONS

    assert set(ds.users["occupation"].unique().to_list()) <= set(ML1M_OCCUPATIONS)
    # Events keep each user's order as distributed: times never go back within a user.
    items, times = ds.sequences.user(0)
    assert len(items) == len(times) and bool((np.diff(times) >= 0).all())
