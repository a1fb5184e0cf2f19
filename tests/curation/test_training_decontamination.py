"""Decontamination of a training stage's own data, on by default: rows containing evaluation rows are removed
before the stage trains, counted per evaluation set in its manifest and the report; `decontaminate: false`
turns it off; its settings and the evaluation sets are part of the stage's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.config.common import DataSpec
from posttrain.curation.decontamination import ContaminationIndex
from posttrain.curation.training import decontaminate_training_data
from posttrain.data import world
from posttrain.fingerprints import stage_fingerprints
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = """\
name: dec
seed: 0
output_dir: {output_dir}
model: {{name_or_path: "builtin:micro"}}
evaluate_base: false
stages:
  - name: pretrain
    kind: pretrain
    data: {{source: corpus.jsonl}}
    replay: {{data: {{source: replay.jsonl}}, ratio: 0.2}}
    train: {{steps: 1, batch_size: 4, seq_len: 32}}
    evaluate: false
  - name: sft
    kind: sft
    data: {{source: train.jsonl}}
    train: {{steps: 1, batch_size: 4, seq_len: 32}}
evaluations:
  - name: arith
    kind: exact_match
    data: {{source: "builtin:arithmetic", split: test, count: 40, levels: [2, 3]}}
    max_new_tokens: 4
"""


def write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture
def leaky(tmp_path: Path) -> Path:
    """SFT rows: 50 training rows and 10 rows of the evaluation set, one of them repeated 30 times (a leak
    repeated stays a leak); corpus: 20 clean documents and 2 quoting an evaluation question; replay: clean."""
    train = world.arithmetic_rows("train", 50, 0, (2, 3))
    leaked = world.arithmetic_rows("test", 40, 0, (2, 3))[:10]
    write_rows(tmp_path / "train.jsonl", train + leaked + [leaked[0]] * 30)
    corpus = [{"text": doc} for doc in world.corpus_documents("train", 20, 0)]
    question = leaked[3]["messages"][0]["content"]
    corpus += [{"text": f"Homework. {question} Show your work."}, {"text": f"Quiz: {question.upper()}"}]
    write_rows(tmp_path / "corpus.jsonl", corpus)
    write_rows(tmp_path / "replay.jsonl", [{"text": doc} for doc in world.corpus_documents("train", 10, 1)])
    (tmp_path / "recipe.yaml").write_text(RECIPE.format(output_dir=tmp_path / "run"))
    return tmp_path


def test_a_run_removes_leaked_rows_from_training_data_and_reports_them(leaky: Path, accelerator):
    log: list[str] = []
    Pipeline(load_recipe(leaky / "recipe.yaml"), accelerator=accelerator, log=log.append).run()
    sft = json.loads((leaky / "run/stages/sft/manifest.json").read_text())["summary"]["decontamination"]
    assert sft["rows_read"] == 90 and sft["rows_removed"] == 40 and sft["contaminated_by_set"] == {"arith": 40}
    assert sft["data"]["data"]["removed"] == 40 and len(sft["examples"]) == 3
    kept = [json.loads(line) for line in Path(sft["data"]["data"]["file"]).read_text().splitlines()]
    test_questions = {r["messages"][0]["content"] for r in world.arithmetic_rows("test", 40, 0, (2, 3))}
    assert len(kept) == 50 and not any(r["messages"][0]["content"] in test_questions for r in kept)
    removed = (leaky / "run/stages/sft/data/removed.jsonl").read_text().splitlines()
    assert len(removed) == 40 and json.loads(removed[0])["where"] == f"{leaky / 'train.jsonl'}:51"
    assert any(line.startswith("[sft] decontamination: 40 of 90 training rows contain evaluation rows (arith: 40); "
                               "1 sets checked, ") for line in log)

    pretrain = json.loads((leaky / "run/stages/pretrain/manifest.json").read_text())["summary"]["decontamination"]
    assert pretrain["data"]["data"] == {"source": "corpus.jsonl", "read": 22, "removed": 2,
                                        "file": str(leaky / "run/stages/pretrain/data/train_data.jsonl")}
    assert pretrain["data"]["replay.data"] == {"source": "replay.jsonl", "read": 10, "removed": 0}
    assert not (leaky / "run/stages/pretrain/data/train_replay.data.jsonl").exists()  # read as given

    from posttrain.report import write_report

    write_report(leaky / "run")
    report = (leaky / "run/report.md").read_text()
    assert "| sft | decontamination (training data) | 40 of 90 |" in report
    assert f"{leaky / 'train.jsonl'}:51: {leaked_question(leaky)}" in report  # an example, with where it came from
    assert "| sft | contaminated by arith | 40 |" in report and "| pretrain | contaminated by arith | 2 |" in report


def leaked_question(folder: Path) -> str:
    return json.loads((folder / "train.jsonl").read_text().splitlines()[50])["messages"][0]["content"]


def test_decontaminate_false_trains_on_the_data_as_given(leaky: Path, accelerator):
    loaded = load_recipe(leaky / "recipe.yaml", ["stages.sft.decontaminate=false", "stages.pretrain.decontaminate=false"])
    assert loaded.recipe.stage("sft").decontaminate.enabled is False and loaded.recipe.stage("sft").decontaminate.sets == []
    Pipeline(loaded, accelerator=accelerator, log=lambda line: None).run()
    summary = json.loads((leaky / "run/stages/sft/manifest.json").read_text())["summary"]
    assert "decontamination" not in summary and not (leaky / "run/stages/sft/data").exists()


def test_settings_and_evaluation_sets_are_in_the_fingerprint(leaky: Path):
    def fingerprints(overrides: list[str]) -> dict[str, str]:
        loaded = load_recipe(leaky / "recipe.yaml", overrides)
        return dict(zip([s.name for s in loaded.recipe.stages], stage_fingerprints(loaded)))

    base = fingerprints([])
    for change in (["stages.sft.decontaminate.ngram=8"], ["stages.sft.decontaminate=false"],
                   ["stages.sft.decontaminate.common_rows=null"], ["evaluations.arith.data.count=20"]):
        assert fingerprints(change)["sft"] != base["sft"], change
    assert fingerprints(["stages.sft.decontaminate.ngram=8"])["pretrain"] == base["pretrain"]


def test_a_changed_evaluation_file_reruns_the_training_stages(leaky: Path):
    recipe = (leaky / "recipe.yaml").read_text().replace(
        'data: {source: "builtin:arithmetic", split: test, count: 40, levels: [2, 3]}', "data: {source: held.jsonl}")
    (leaky / "recipe.yaml").write_text(recipe)
    write_rows(leaky / "held.jsonl", world.arithmetic_rows("test", 40, 0, (2, 3)))
    before = stage_fingerprints(load_recipe(leaky / "recipe.yaml"))
    write_rows(leaky / "held.jsonl", world.arithmetic_rows("test", 41, 0, (2, 3)))
    after = stage_fingerprints(load_recipe(leaky / "recipe.yaml"))
    assert before[0] != after[0] and before[1] != after[1]


def test_data_a_curate_stage_wrote_is_left_to_that_stage(tmp_path: Path):
    recipe = RECIPE.format(output_dir=tmp_path / "run").replace("""  - name: sft
    kind: sft
    data: {source: train.jsonl}""", """  - name: clean
    kind: curate
    sources: [{data: {source: train.jsonl}}]
    decontaminate: false
  - name: sft
    kind: sft
    data: {source: "stage:clean/rows"}""")
    for name in ("train.jsonl", "corpus.jsonl", "replay.jsonl"):
        write_rows(tmp_path / name, [{"text": "one two three four"}])
    (tmp_path / "recipe.yaml").write_text(recipe)
    loaded = load_recipe(tmp_path / "recipe.yaml").recipe
    assert loaded.stage("sft").decontaminate.sets == [] and loaded.stage("clean").decontaminate.sets == []
    assert [s.name for s in loaded.stage("pretrain").decontaminate.sets] == ["arith"]
    sft = loaded.stage("sft")
    bound = sft.model_copy(update={"data": DataSpec(source=str(tmp_path / "train.jsonl"))})
    assert decontaminate_training_data(sft, bound, tmp_path, 0, tmp_path / "sft", {"clean"}) == (bound, None)


def test_common_text_is_ignored_but_a_repeated_leak_is_not():
    """GPT-3's rule (arXiv 2005.14165 app. C): an evaluation n-gram in more than `common_rows` distinct training
    rows is common text; copies of one row count once."""
    index = ContaminationIndex(common_rows=10)
    index.add("corpus", "It rains in the morning.")
    index.add("arith", "What is 23 + 45?")
    stock = [f"Day {i}: it rains in the morning." for i in range(11)]  # 11 distinct rows
    leak = ["What is 23 + 45? 68"] * 50  # one row, 50 copies
    for text in stock + leak:
        index.count(text)
    index.settle()
    assert index.common == {("it", "rains", "in", "the", "morning")}
    assert index.match(stock[0]) is None and index.match(leak[0]).set_name == "arith"
    few = ContaminationIndex(common_rows=10)
    few.add("corpus", "It rains in the morning.")
    for text in stock[:10]:
        few.count(text)
    few.settle()
    assert few.match(stock[0]).set_name == "corpus"  # 10 rows: not yet common


def test_the_quickstart_trains_on_the_same_data(tmp_path: Path):
    """The built-in world's arithmetic splits are disjoint by construction; counted here: no training row of any
    quickstart stage contains an evaluation row, so every stage reads its data as given (the pre-training corpus
    skips the `corpus` set, whose stock sentences both corpus splits share: see the recipe)."""
    loaded = load_recipe(REPO / "recipes" / "quickstart.yaml")
    for stage in loaded.recipe.stages:
        bound, summary = decontaminate_training_data(stage, stage, loaded.directory, loaded.recipe.seed,
                                                     tmp_path / stage.name, set())
        assert summary["rows_removed"] == 0 and bound is stage, (stage.name, summary["contaminated_by_set"])
        assert len(summary["evaluation_sets"]) == (5 if stage.name == "pretrain" else 6)


def test_training_on_an_evaluation_set_is_one_clear_error(leaky: Path, accelerator):
    """Every row removed: the stage stops naming its data, the sets and the way to train on them anyway."""
    recipe = (leaky / "recipe.yaml").read_text().replace("data: {source: train.jsonl}", "data: {source: held.jsonl}")
    (leaky / "recipe.yaml").write_text(recipe.replace(
        'data: {source: "builtin:arithmetic", split: test, count: 40, levels: [2, 3]}', "data: {source: held.jsonl}"))
    write_rows(leaky / "held.jsonl", world.arithmetic_rows("test", 40, 0, (2, 3)))
    with pytest.raises(ValueError, match=r"stage 'sft': all 40 rows of `data` \(held.jsonl\) contain rows of the "
                       r"recipe's evaluation sets \(arith: 40\); to train on them anyway .* `decontaminate: false`"):
        Pipeline(load_recipe(leaky / "recipe.yaml"), accelerator=accelerator, log=lambda line: None).run()


def test_a_curate_stage_ignores_common_text_too(tmp_path: Path):
    from posttrain.config.curate import CurateConfig
    from posttrain.curation.curate import curate

    stock = [{"text": f"Note {i}: it rains in the morning, says {name}."} for i, name in enumerate("ABCDEFGHIJKL")]
    write_rows(tmp_path / "train.jsonl", stock + [{"text": "Homework: what is 23 + 45? Show your work."},
                                                  {"text": "A clean row about nothing in particular."}])
    write_rows(tmp_path / "eval.jsonl", [{"text": "It rains in the morning."}, {"text": "What is 23 + 45?"}])
    config = CurateConfig.model_validate({
        "name": "c", "kind": "curate", "sources": [{"data": {"source": "train.jsonl"}}], "dedup": {"near": False},
        "decontaminate": {"sets": [{"name": "held", "data": {"source": "eval.jsonl"}}]}})
    summary = curate(config, tmp_path, 0, tmp_path / "out")
    assert summary["removed"]["decontamination"] == 1 and summary["rows_written"] == 13
    assert summary["common_ngrams"] == 1 and summary["common_ngram_examples"] == ["it rains in the morning"]
    off = config.model_copy(update={"decontaminate": config.decontaminate.model_copy(update={"common_rows": None})})
    assert curate(off, tmp_path, 0, tmp_path / "off")["removed"]["decontamination"] == 13
