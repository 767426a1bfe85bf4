"""The README's quick start runs as written, top to bottom, on the real MovieLens-100K."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import small_engine_config

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None, "the README's quick start has no python block"
    return match.group(1)


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_home: Path
) -> None:
    code = quick_start_code()
    # The one change: a smaller engine, so that CI fits in seconds instead of minutes.
    anchor = "EngineConfig(progress=True)"
    assert code.count(anchor) == 1
    code = code.replace(anchor, "small_engine_config(progress=True)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIFTRANK_DATA_HOME", str(data_home))
    namespace: dict[str, object] = {"small_engine_config": small_engine_config}
    exec(compile(code, f"{README.name} quick start", "exec"), namespace)

    from driftrank.engine import Engine

    assert (tmp_path / "models" / "ml100k" / "manifest.json").is_file()  # saved right after the fit
    engine = namespace["engine"]
    assert isinstance(engine, Engine) and engine.n_users == 943  # the model saved before observe
    table = namespace["table"]
    assert table.height == 30 and set(table["user_id"].to_list()) == {196, 186, 22}  # type: ignore[attr-defined]
