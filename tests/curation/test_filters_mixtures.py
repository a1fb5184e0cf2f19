"""Quality filters, the user's filter, mixtures and curricula, through `curate()` on small files (no model)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from posttrain.config.curate import CurateConfig
from posttrain.curation.curate import curate
from posttrain.curation.mixture import Share, target_counts
from posttrain.curation.quality import (
    FilterError, character_reason, duplicate_ngram_share, length_reason, repetition_reason, top_ngram_share,
)
from posttrain.data import world


def config(**fields) -> CurateConfig:
    return CurateConfig.model_validate({"name": "c", "kind": "curate", **fields})


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gopher_repetition_shares_by_hand():
    # "the cat" occurs 3 times: 3 x 6 characters of 21 word characters
    assert top_ngram_share("the cat the cat the cat sat".split(), 2) == pytest.approx(18 / 21)
    # the 5-gram "a b c d e" occurs twice and covers 10 of the 11 one-letter words
    assert duplicate_ngram_share("a b c d e a b c d e x".split(), 5) == pytest.approx(10 / 11)
    assert duplicate_ngram_share("a b c d e f g h i j k".split(), 5) == 0.0
    assert "most frequent 2-gram" in repetition_reason("buy now " * 30 + "please")
    assert repetition_reason("buy now " * 30 + "please", min_words=100) is None  # too short to judge
    assert repetition_reason("What is the capital of France? The capital of France is Paris.") is None
    assert repetition_reason("Ann has 23 apples and gets 45 more. How many now? 68", min_words=1) is None


def test_length_and_character_rules():
    assert length_reason("one two", 3, None, None) == "2 words < min_words 3"
    assert length_reason("one two three four", 1, 3, None) == "4 words > max_words 3"
    assert length_reason("x" * 50, 1, None, 40) == "50 characters > max_chars 40"
    assert length_reason("What is 2 + 3?", 3, 10, 100) is None
    assert character_reason("What is 23 + 45? 68", 0.5, ("LATIN",)) is None  # arithmetic rows pass
    assert character_reason("<<<>>>{{}}##", 0.5, None).startswith("letters, digits and spaces are 0%")
    assert character_reason("Привет мир, как дела", 0.5, ("LATIN",)) == "letters outside LATIN: 100%"


def test_quality_rules_remove_rows_in_a_run(tmp_path: Path):
    rows = [{"text": "a fine sentence about apples and pens"}, {"text": "spam " * 60},
            {"text": "hi"}, {"text": "a b c " + "#" * 30}]
    summary = curate(config(sources=[{"data": {"source": write(tmp_path / "a.jsonl", rows)}}],
                            quality={"min_words": 3}), tmp_path, 0, tmp_path / "out")
    assert summary["removed"]["quality.length"] == 1 and summary["removed"]["quality.repetition"] == 1
    assert summary["removed"]["quality.characters"] == 1
    assert read(tmp_path / "out" / "rows.jsonl") == rows[:1]


FILTERS = """\
def short_answers(row):
    answer = row["messages"][-1]["content"]
    return True if len(answer) <= 2 else f"answer {answer} has {len(answer)} digits"

def broken(row):
    return row["missing_key"]

def undecided(row):
    return 3
"""


def test_user_filter_keeps_drops_and_errors_name_the_filter_and_row(tmp_path: Path):
    (tmp_path / "filters.py").write_text(FILTERS)
    data = write(tmp_path / "a.jsonl", world.arithmetic_rows("train", 40, 0, (2, 5)))
    summary = curate(config(sources=[{"data": {"source": data}}], quality={"filter": "filters.py:short_answers"}),
                     tmp_path, 0, tmp_path / "out")
    assert summary["removed"]["quality.filter"] == 20  # level 5: three-digit answers
    assert all(len(r["messages"][-1]["content"]) <= 2 for r in read(tmp_path / "out" / "rows.jsonl"))
    assert "has 3 digits" in summary["examples"]["quality.filter"][0]["reason"]
    with pytest.raises(FilterError, match=rf"filter filters.py:broken raised on {data}:1: KeyError: 'missing_key'"):
        curate(config(sources=[{"data": {"source": data}}], quality={"filter": "filters.py:broken"}), tmp_path, 0, tmp_path / "o2")
    with pytest.raises(FilterError, match=rf"filter filters.py:undecided returned int on {data}:1"):
        curate(config(sources=[{"data": {"source": data}}], quality={"filter": "filters.py:undecided"}), tmp_path, 0, tmp_path / "o3")
    with pytest.raises(ValueError, match="has no function 'nothing'"):
        curate(config(sources=[{"data": {"source": data}}], quality={"filter": "filters.py:nothing"}), tmp_path, 0, tmp_path / "o4")


def test_target_counts_by_hand():
    shares = [Share("a", 100, weight=3), Share("b", 10, weight=1)]
    assert target_counts(shares, None, False) == [30, 10]  # b is the binding source: 10 x 4 / 1 = 40 rows
    assert target_counts(shares, 80, True) == [60, 20]
    assert target_counts([Share("a", 100, count=7), Share("b", 10)], None, False) == [7, 10]
    with pytest.raises(ValueError, match="mixture source 'b' has 10 rows after curation, 20 are asked for"):
        target_counts(shares, 80, False)
    # a source curation emptied (all leaked) adds nothing; the others keep their share of the total
    emptied = [Share("a", 100, weight=3), Share("leak", 0, weight=1, read=50)]
    assert target_counts(emptied, 40, True) == [40, 0]
    assert target_counts([Share("a", 100), Share("leak", 0, count=400, read=50)], None, True) == [100, 0]
    with pytest.raises(ValueError, match="mixture source 'none' has no rows"):
        target_counts([Share("a", 100), Share("none", 0, read=0)], None, True)


def mixed_run(tmp_path: Path, **mixture) -> list[dict]:
    a = write(tmp_path / "a.jsonl", [{"text": f"row number {i} of source a", "source": "a"} for i in range(60)])
    b = write(tmp_path / "b.jsonl", [{"text": f"row number {i} of source b", "source": "b"} for i in range(20)])
    sources = [{"data": {"source": a}, "weight": 3}, {"data": {"source": b}, "weight": 1}]
    curate(config(sources=sources, mixture=mixture, dedup={"near": False}), tmp_path, 0, tmp_path / "out")
    return read(tmp_path / "out" / "rows.jsonl")


def test_weights_without_replacement_keep_the_ratio_and_draw_no_row_twice(tmp_path: Path):
    rows = mixed_run(tmp_path)
    assert Counter(r["source"] for r in rows) == {"a": 60, "b": 20}
    assert len({r["text"] for r in rows}) == 80
    assert [r["source"] for r in rows] != sorted(r["source"] for r in rows)  # interleaved


def test_weights_with_replacement_repeat_the_small_source(tmp_path: Path):
    rows = mixed_run(tmp_path, total=200, replacement=True)
    counts = Counter(r["source"] for r in rows)
    assert counts == {"a": 150, "b": 50}
    per_row = Counter(r["text"] for r in rows if r["source"] == "b")
    assert sorted(set(per_row.values())) == [2, 3]  # 50 of 20 rows: two whole passes and 10 rows a third time


def test_curriculum_orders_by_level_and_cuts_phases(tmp_path: Path):
    data = write(tmp_path / "a.jsonl", world.arithmetic_rows("train", 90, 0, (1, 2, 3)))
    summary = curate(config(sources=[{"data": {"source": data}}], curriculum={"key": "level", "phases": 3}),
                     tmp_path, 0, tmp_path / "out")
    levels = [r["level"] for r in read(tmp_path / "out" / "rows.jsonl")]
    assert levels == sorted(levels)
    phases = [[r["level"] for r in read(tmp_path / "out" / f"phase_{i}.jsonl")] for i in (1, 2, 3)]
    assert [len(p) for p in phases] == summary["phases"] and sum(summary["phases"]) == len(levels)
    assert max(phases[0]) <= min(phases[1]) and max(phases[1]) <= min(phases[2])
    curate(config(sources=[{"data": {"source": data}}], curriculum={"key": "level", "order": "hard_to_easy"}),
           tmp_path, 0, tmp_path / "down")
    down = [r["level"] for r in read(tmp_path / "down" / "rows.jsonl")]
    assert down == sorted(down, reverse=True)


def test_curriculum_function_and_bad_difficulty(tmp_path: Path):
    (tmp_path / "difficulty.py").write_text("def digits(row):\n    return len(row['answer'])\n")
    rows = world.arithmetic_rows("train", 60, 0, (1, 3, 5))
    data = write(tmp_path / "a.jsonl", rows)
    curate(config(sources=[{"data": {"source": data}}], curriculum={"function": "difficulty.py:digits"}),
           tmp_path, 0, tmp_path / "out")
    lengths = [len(r["answer"]) for r in read(tmp_path / "out" / "rows.jsonl")]
    assert lengths == sorted(lengths) and lengths[0] < lengths[-1]
    write(tmp_path / "b.jsonl", [{"text": "an easy row here", "level": 1}, {"text": "a row without a number", "level": "hard"}])
    with pytest.raises(ValueError, match=r"curriculum key 'level': .*b.jsonl:2 has difficulty 'hard'; a number is needed"):
        curate(config(sources=[{"data": {"source": str(tmp_path / "b.jsonl")}}], curriculum={"key": "level"}),
               tmp_path, 0, tmp_path / "o2")


def test_an_rl_prompt_file_is_curated_and_still_loads_as_prompts(tmp_path: Path):
    from posttrain.config.common import DataSpec
    from posttrain.rl.prompts import load_prompts

    rows = [{"question": f"What is {a} + {b}?", "answer": str(a + b), "level": 2} for a in range(10, 14) for b in range(3)]
    data = write(tmp_path / "p.jsonl", rows + rows[:4])
    summary = curate(config(sources=[{"data": {"source": data}}], curriculum={"key": "level"}), tmp_path, 0, tmp_path / "out")
    assert summary["removed"]["dedup.exact"] == 4
    prompts = load_prompts(DataSpec(source=str(tmp_path / "out" / "rows.jsonl")), tmp_path, 0)
    assert len(prompts.rows) == 12 and prompts.rows[0].example["answer"]
