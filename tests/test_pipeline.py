"""End to end on the micro model: a run writes checkpoints, manifests, metrics and the evaluation table;
unchanged stages are reused, changed ones and everything downstream re-run; a failure or a failed gate
keeps finished work; LoRA saves a merged plain checkpoint; replay mixes documents; the entry point runs."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import posttrain.eval.evaluators
import posttrain.stages
from posttrain.config.common import ModelSpec
from posttrain.config.pretrain import PretrainConfig
from posttrain.errors import GateFailed
from posttrain.models.checkpoint import weights_hash
from posttrain.pipeline import Pipeline
from posttrain.recipe import load_recipe
from posttrain.report.table import format_table
from posttrain.stages.pretrain import PretrainStage
from posttrain.stages.sft import SFTStage
from posttrain.training.metrics import MetricsWriter

STAGES = ("pretrain", "sft")


class Run:
    """A recipe file and its run directory, run in this process with the log captured."""

    def __init__(self, folder: Path, text: str, accelerator) -> None:
        self.folder = folder
        self.run_dir = folder / "run"
        self.recipe = folder / "recipe.yaml"
        folder.mkdir(parents=True, exist_ok=True)
        self.recipe.write_text(text.format(output_dir=self.run_dir))
        self.accelerator = accelerator
        self.log: list[str] = []

    def __call__(self, overrides: list[str] | None = None) -> list[dict]:
        self.log = []
        pipeline = Pipeline(load_recipe(self.recipe, overrides), accelerator=self.accelerator, log=self.log.append)
        return pipeline.run()

    def pipeline(self, overrides: list[str] | None = None) -> Pipeline:
        return Pipeline(load_recipe(self.recipe, overrides), accelerator=self.accelerator, log=self.log.append)

    def stage(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def manifest(self, name: str) -> dict:
        return json.loads((self.stage(name) / "manifest.json").read_text())

    def logged(self, name: str, what: str) -> bool:
        return any(line.startswith(f"[{name}] {what}") for line in self.log)


def _quiet_init(original):
    def init(self, path, stage, is_main=True, stream=None, **options):
        original(self, path, stage, is_main, io.StringIO() if stream is None else stream, **options)

    return init


@pytest.fixture(autouse=True)
def quiet_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages print a progress line per step; keep the test output short."""
    monkeypatch.setattr(MetricsWriter, "__init__", _quiet_init(MetricsWriter.__init__))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, accelerator, micro_recipe) -> Run:
    """The micro recipe run once; tests copy its run directory rather than train the same stages again."""
    run = Run(tmp_path_factory.mktemp("first"), micro_recipe, accelerator)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MetricsWriter, "__init__", _quiet_init(MetricsWriter.__init__))
        run.table = run()
    return run


@pytest.fixture
def copied(first_run: Run, tmp_path: Path, micro_recipe, accelerator) -> Run:
    """A copy of the first run (recipe and run directory) that a test may change freely."""
    run = Run(tmp_path, micro_recipe, accelerator)
    shutil.copytree(first_run.run_dir, run.run_dir)
    return run


@pytest.fixture
def spy_stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the stages that were actually built (i.e. trained) during the test."""
    built: list[str] = []
    original = posttrain.stages.stage_class

    def stage_class(kind: str):
        cls = original(kind)

        def build(context):
            built.append(context.config.name)
            return cls(context)

        return build

    monkeypatch.setattr(posttrain.stages, "stage_class", stage_class)
    return built


def test_run_writes_checkpoints_manifests_metrics_and_tables(first_run: Run) -> None:
    run = first_run
    assert run.logged("pretrain", "running pretrain") and run.logged("sft", "running sft")
    for name in STAGES:
        folder = run.stage(name)
        model = AutoModelForCausalLM.from_pretrained(folder / "checkpoint")
        tokenizer = AutoTokenizer.from_pretrained(folder / "checkpoint")
        assert model.config.vocab_size == len(tokenizer)
        manifest = run.manifest(name)
        assert manifest["complete"] is True and manifest["stage"] == name and manifest["kind"] == name
        assert {"fingerprint", "config_hash", "input_hash", "versions", "data", "summary"} <= set(manifest)
        assert manifest["checkpoint_hash"] == weights_hash(folder / "checkpoint")
        assert {"python", "torch", "transformers"} <= set(manifest["versions"])
        assert manifest["summary"]["steps"] == 3
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["stage"] == name for m in metrics)
        evaluation = json.loads((folder / "eval.json").read_text())
        assert set(evaluation["metrics"]) == {"arith.accuracy", "arith.n"} and evaluation["metrics"]["arith.n"] == 8
        assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert run.manifest("pretrain")["input_hash"] is None
    assert run.manifest("sft")["input_hash"] == run.manifest("pretrain")["checkpoint_hash"]
    assert run.manifest("sft")["checkpoint_hash"] != run.manifest("pretrain")["checkpoint_hash"]
    table = json.loads((run.run_dir / "evaluations.json").read_text())
    assert [row["stage"] for row in table] == ["base", "pretrain", "sft"]
    assert table == run.table
    assert yaml.safe_load((run.run_dir / "recipe.yaml").read_text())["stages"][1]["name"] == "sft"


def test_second_run_reuses_every_stage_and_evaluation(copied: Run, first_run: Run, monkeypatch) -> None:
    def no_training(kind):
        raise AssertionError(f"stage kind {kind} was built although nothing changed")

    def no_evaluation(kind):
        raise AssertionError("an evaluation ran although its model and config did not change")

    monkeypatch.setattr(posttrain.stages, "stage_class", no_training)
    monkeypatch.setattr(posttrain.eval.evaluators, "evaluator", no_evaluation)
    manifests = {name: (copied.stage(name) / "manifest.json").read_bytes() for name in STAGES}
    table = copied()
    assert copied.logged("pretrain", "reused") and copied.logged("sft", "reused")
    assert table == first_run.table
    assert {name: (copied.stage(name) / "manifest.json").read_bytes() for name in STAGES} == manifests


def test_changing_sft_reruns_only_sft(copied: Run, spy_stages: list[str]) -> None:
    before = {name: copied.manifest(name) for name in STAGES}
    copied(["stages.sft.train.lr=2.0e-3"])
    assert spy_stages == ["sft"]
    assert copied.logged("pretrain", "reused") and copied.logged("sft", "running")
    assert copied.manifest("pretrain") == before["pretrain"]
    after = copied.manifest("sft")
    assert after["fingerprint"] != before["sft"]["fingerprint"] and after["config_hash"] != before["sft"]["config_hash"]
    assert after["checkpoint_hash"] != before["sft"]["checkpoint_hash"]
    assert after["config"]["train"]["lr"] == 2.0e-3


def test_changing_pretrain_reruns_both(copied: Run, spy_stages: list[str]) -> None:
    before = {name: copied.manifest(name)["fingerprint"] for name in STAGES}
    copied(["stages.pretrain.train.lr=2.0e-3"])
    assert spy_stages == ["pretrain", "sft"]
    assert all(copied.manifest(name)["fingerprint"] != before[name] for name in STAGES)
    assert copied.manifest("sft")["input_hash"] == copied.manifest("pretrain")["checkpoint_hash"]


def test_changing_the_data_reruns_the_stage(copied: Run, spy_stages: list[str]) -> None:
    copied(["stages.sft.data.count=24"])
    assert spy_stages == ["sft"]


def test_rerun_parent_with_new_weights_reruns_children(copied: Run, spy_stages: list[str], monkeypatch) -> None:
    # pretrain's manifest is lost (deleted folder, or an interrupted re-run) and training it again gives other
    # weights (as GPU kernels may): sft, trained from the old weights, must not be reused
    (copied.stage("pretrain") / "manifest.json").unlink()
    train = PretrainStage.train

    def nondeterministic_train(self):
        summary = train(self)
        with torch.no_grad():
            self.model.model.norm.weight.add_(0.01)
        return summary

    monkeypatch.setattr(PretrainStage, "train", nondeterministic_train)
    copied()
    assert spy_stages[0] == "pretrain"
    assert copied.manifest("sft")["input_hash"] == copied.manifest("pretrain")["checkpoint_hash"]


def test_failed_stage_keeps_earlier_stage_and_resumes(tmp_path: Path, micro_recipe, accelerator, monkeypatch, spy_stages) -> None:
    run = Run(tmp_path, micro_recipe, accelerator)

    def broken(self):
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(SFTStage, "train", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            run()
    assert spy_stages == ["pretrain", "sft"]
    manifest = run.manifest("pretrain")
    assert manifest["complete"] and manifest["checkpoint_hash"] == weights_hash(run.stage("pretrain") / "checkpoint")
    AutoModelForCausalLM.from_pretrained(run.stage("pretrain") / "checkpoint")
    assert not (run.stage("sft") / "manifest.json").exists() and not (run.stage("sft") / "checkpoint").exists()
    spy_stages.clear()
    table = run()
    assert spy_stages == ["sft"]
    assert run.logged("pretrain", "reused") and run.logged("sft", "running")
    assert run.manifest("pretrain") == manifest and run.manifest("sft")["complete"]
    assert [row["stage"] for row in table] == ["base", "pretrain", "sft"]


def test_incomplete_stage_is_not_taken_as_finished(copied: Run, spy_stages: list[str]) -> None:
    pipeline = copied.pipeline()
    fingerprint = pipeline.fingerprints()[1]
    parent = copied.stage("pretrain") / "checkpoint"
    assert pipeline.is_complete("sft", fingerprint, parent)
    manifest_path = copied.stage("sft") / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert not pipeline.is_complete("sft", "0" * 16, parent)
    for broken in ({k: v for k, v in manifest.items() if k != "complete"}, {**manifest, "complete": False}):
        manifest_path.write_text(json.dumps(broken))
        assert not pipeline.is_complete("sft", fingerprint, parent)
    manifest_path.write_text("{not json")
    assert not pipeline.is_complete("sft", fingerprint, parent)
    # killed while saving: the manifest of the last good run is there, the checkpoint only half-written
    manifest_path.write_text(json.dumps(manifest))
    (copied.stage("sft") / "checkpoint").rename(copied.stage("sft") / "checkpoint.tmp-123")
    assert not pipeline.is_complete("sft", fingerprint, parent)
    copied()
    assert spy_stages == ["sft"] and copied.logged("sft", "running")
    AutoModelForCausalLM.from_pretrained(copied.stage("sft") / "checkpoint")
    assert copied.manifest("sft")["complete"]


def test_gate_min_fails_and_keeps_the_checkpoint(copied: Run, spy_stages: list[str]) -> None:
    gate = "gates=[{metric: arith.accuracy, min: 2.0, stages: [sft]}]"
    with pytest.raises(GateFailed, match=r"after stage 'sft': arith.accuracy = 0(\.\d+)? < min 2.0"):
        copied(["stages.sft.train.lr=2.0e-3", gate])
    assert spy_stages == ["sft"]
    manifest = copied.manifest("sft")
    assert manifest["complete"] and manifest["checkpoint_hash"] == weights_hash(copied.stage("sft") / "checkpoint")
    # a gate that holds lets the run finish (reusing the kept checkpoint)
    table = copied(["stages.sft.train.lr=2.0e-3", "gates=[{metric: arith.accuracy, min: 0.0}]"])
    assert [row["stage"] for row in table] == ["base", "pretrain", "sft"] and spy_stages == ["sft"]


def test_max_drop_gate_compares_with_the_parent_stage(copied: Run) -> None:
    pipeline = copied.pipeline(["gates=[{metric: arith.accuracy, max_drop: 0.1}]"])
    pipeline.table = [{"stage": "pretrain", "arith.accuracy": 0.5}]
    pipeline._check_gates("sft", "pretrain", {"arith.accuracy": 0.45})
    with pytest.raises(GateFailed, match=r"fell from 0.5 \(pretrain\) to 0.3.*max_drop 0.1"):
        pipeline._check_gates("sft", "pretrain", {"arith.accuracy": 0.3})
    with pytest.raises(GateFailed, match="produced no such metric"):
        pipeline._check_gates("sft", "pretrain", {"other.accuracy": 0.9})


def test_max_drop_gate_relative_to_a_named_stage(copied: Run) -> None:
    pipeline = copied.pipeline(["gates=[{metric: arith.accuracy, max_drop: 0.1, relative_to: base}]"])
    pipeline.table = [{"stage": "base", "arith.accuracy": 0.5}, {"stage": "pretrain", "arith.accuracy": 0.45}]
    pipeline._check_gates("sft", "pretrain", {"arith.accuracy": 0.42})
    # 0.07 below its parent, but 0.12 below the stage the gate names
    with pytest.raises(GateFailed, match=r"fell from 0.5 \(base\) to 0.38.*max_drop 0.1"):
        pipeline._check_gates("sft", "pretrain", {"arith.accuracy": 0.38})


def test_max_drop_gate_after_an_unevaluated_parent_measures_from_the_nearest_evaluated_one(
    copied: Run, monkeypatch
) -> None:
    # pretrain is not evaluated: the gate on sft must measure from the base model, not skip the check
    checked = []
    monkeypatch.setattr(Pipeline, "_check_gates", lambda self, name, ancestor, metrics: checked.append((name, ancestor)))
    copied(["stages.pretrain.evaluate=false", "gates=[{metric: arith.accuracy, max_drop: 0.1}]"])
    assert checked == [("sft", "base")]


def test_evaluate_base_off(copied: Run) -> None:
    table = copied(["evaluate_base=false"])
    assert [row["stage"] for row in table] == ["pretrain", "sft"]


def test_sft_with_lora_saves_a_merged_plain_checkpoint(copied: Run, spy_stages: list[str]) -> None:
    copied(["stages.sft.lora={r: 4, alpha: 8}", "stages.sft.train.lr=1.0e-2"])
    assert spy_stages == ["sft"]
    checkpoint = copied.stage("sft") / "checkpoint"
    assert (checkpoint / "adapter" / "adapter_config.json").exists()
    assert not (checkpoint / "adapter_config.json").exists()
    AutoModelForCausalLM.from_pretrained(checkpoint)
    merged = load_file(checkpoint / "model.safetensors")
    start = load_file(copied.stage("pretrain") / "checkpoint" / "model.safetensors")
    assert set(merged) == set(start)  # same plain layout, no lora_ tensors
    # the base stays frozen: embeddings and norms are the starting ones; adapted matrices changed
    assert torch.equal(merged["model.embed_tokens.weight"], start["model.embed_tokens.weight"])
    assert torch.equal(merged["model.norm.weight"], start["model.norm.weight"])
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"], start["model.layers.0.self_attn.q_proj.weight"])


def test_pretrain_replay_mixes_in_the_replay_share(tmp_path: Path, accelerator) -> None:
    from posttrain.stages import StageContext

    (tmp_path / "new.jsonl").write_text("".join(json.dumps({"text": f"new document {i}"}) + "\n" for i in range(30)))
    (tmp_path / "old.jsonl").write_text("".join(json.dumps({"text": f"old document {i}"}) + "\n" for i in range(5)))
    config = PretrainConfig.model_validate(
        {
            "name": "continued", "kind": "pretrain", "data": {"source": "new.jsonl"},
            "replay": {"data": {"source": "old.jsonl"}, "ratio": 0.25}, "train": {"steps": 1},
        }
    )
    context = StageContext(
        config=config, model_spec=ModelSpec(name_or_path="builtin:micro"), input_checkpoint=None,
        stage_dir=tmp_path / "stage", recipe_dir=tmp_path, seed=0, accelerator=accelerator,
        metrics=MetricsWriter(None, "continued", stream=io.StringIO()),
    )
    documents, skipped = PretrainStage(context)._documents()
    texts = [row["text"] for row in documents]
    old = [i for i, text in enumerate(texts) if text.startswith("old")]
    assert len(texts) == 40 and len(old) == 10  # 10 / (30 + 10) = 0.25
    assert sum(text.startswith("new") for text in texts) == 30 and skipped == 0
    assert max(old) - min(old) > 10  # shuffled into the mix, not appended


def test_format_table(first_run: Run) -> None:
    text = format_table(first_run.table)
    header, rule, *body = text.splitlines()
    assert header.split() == ["stage", "arith.accuracy"]  # `.n` counts are left out
    assert set(rule) <= {"-", " "}
    assert [line.split()[0] for line in body] == ["base", "pretrain", "sft"]
    mixed = format_table([{"stage": "base", "a.x": 0.123456}, {"stage": "sft", "b.y": 2}])
    assert mixed.splitlines()[0].split() == ["stage", "a.x", "b.y"]
    assert mixed.splitlines()[2].split() == ["base", "0.1235", "-"]
    assert mixed.splitlines()[3].split() == ["sft", "-", "2"]


def test_run_entry_point_in_a_subprocess(tmp_path: Path, write_recipe) -> None:
    recipe = write_recipe(
        tmp_path,
        """\
        name: entry
        model: {name_or_path: "builtin:micro"}
        stages:
          - name: sft
            kind: sft
            data: {source: "builtin:arithmetic", count: 16, levels: [1]}
            train: {steps: 3, batch_size: 4, seq_len: 32, lr: 1.0e-3}
        evaluations:
          - name: arith
            kind: exact_match
            data: {source: "builtin:arithmetic", split: test, count: 4, levels: [1]}
            max_new_tokens: 2
        """,
    )
    output = tmp_path / "out"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "posttrain.run", str(recipe), "--set", "stages.sft.train.steps=1", "--output-dir", str(output)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Evaluation per stage:" in done.stdout
    table = done.stdout.split("Evaluation per stage:")[1]
    assert "arith.accuracy" in table and "\nbase " in table and "\nsft " in table
    assert f"Run directory: {output}" in done.stdout
    assert yaml.safe_load((output / "recipe.yaml").read_text())["stages"][0]["train"]["steps"] == 1
    assert json.loads((output / "stages" / "sft" / "manifest.json").read_text())["summary"]["steps"] == 1
    # each stage's training and evaluation time, and the whole run's
    assert re.search(r"^Time per stage: sft \d+s \+ eval \d+s; whole run \d+s$", done.stdout, re.M), done.stdout[-500:]
    again = subprocess.run(
        [sys.executable, "-m", "posttrain.run", str(recipe), "--set", "stages.sft.train.steps=1", "--output-dir", str(output)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert again.returncode == 0 and "Time per stage: sft reused" in again.stdout, again.stderr[-2000:]


def test_builtin_data_fingerprint_follows_the_generator_code_and_the_constitution_file(tmp_path: Path, monkeypatch) -> None:
    import posttrain.fingerprints as fingerprints
    from posttrain.files import json_hash
    from posttrain.config.common import DataSpec

    spec = DataSpec(source="builtin:rlaif", count=10, constitution="c.yaml")
    (tmp_path / "c.yaml").write_text("principles: []\n")
    first = fingerprints.data_fingerprint(spec, tmp_path, seed=0)
    assert fingerprints.data_fingerprint(spec, tmp_path, seed=0) == first
    (tmp_path / "c.yaml").write_text("principles: [x]\n")  # an edited constitution makes other demonstrations
    edited = fingerprints.data_fingerprint(spec, tmp_path, seed=0)
    assert edited != first
    monkeypatch.setattr(fingerprints, "builtin_generators_digest", lambda: "other generator code")
    assert fingerprints.data_fingerprint(spec, tmp_path, seed=0) != edited
    # a hub dataset is named, not generated: the generators' code does not enter its fingerprint
    hub = DataSpec(source="hf:org/data")
    assert fingerprints.data_fingerprint(hub, tmp_path, 0) == json_hash([hub.model_dump(mode="json", by_alias=True), 0])


def test_sft_counts_truncated_and_emptied_examples(tmp_path: Path, micro_recipe, accelerator, caplog) -> None:
    """Rows longer than seq_len are counted, and those left without an assistant token dropped (issue 19:
    at `seq_len: 32` an example kept zero loss tokens and still took a row)."""
    run = Run(tmp_path, micro_recipe, accelerator)
    # level-4/5 questions are longer than 16 tokens of the micro tokenizer: their answers start past the cut
    with caplog.at_level("WARNING", logger="posttrain.stages.sft"):
        run(["stages.sft.train.seq_len=16", "stages.sft.data.levels=[1,5]", "stages.pretrain.train.steps=1"])
    summary = run.manifest("sft")["summary"]
    assert summary["truncated_examples"] > 0 and 0 < summary["emptied_examples"] <= summary["truncated_examples"]
    assert any("were cut" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)


def test_sft_render_raw_concatenates_prompt_and_completion(tmp_path: Path, micro_recipe, accelerator, monkeypatch) -> None:
    """`render: raw` rows reach SFT as TRL's plain prompt + completion (+ eos), not through the chat template."""
    import posttrain.stages.sft as sft_module

    rows = [{"prompt": f"What is {i} + 1? ", "completion": str(i + 1)} for i in range(8)]
    (tmp_path / "pc.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    seen: list = []
    original = sft_module.encode_raw_pairs
    monkeypatch.setattr(sft_module, "encode_raw_pairs", lambda tok, pairs: seen.extend(pairs) or original(tok, pairs))
    run = Run(tmp_path, micro_recipe, accelerator)
    run(["stages.pretrain.train.steps=1", f"stages.sft.data={{source: {tmp_path / 'pc.jsonl'}, render: raw}}"])
    assert sorted(seen) == sorted((row["prompt"], row["completion"]) for row in rows)
    assert run.manifest("sft")["summary"]["steps"] == 3


def test_sft_best_fit_packing_makes_fewer_rows(tmp_path: Path, micro_recipe, accelerator) -> None:
    rows = {}
    for strategy in ("in_order", "best_fit"):
        run = Run(tmp_path / strategy, micro_recipe, accelerator)
        run(["stages.pretrain.train.steps=1", "stages.sft.train.steps=1", "stages.sft.data.levels=[1,5]",
             f"stages.sft.train.packing_strategy={strategy}"])
        rows[strategy] = run.manifest("sft")["summary"]["packed_rows"]
    assert rows["best_fit"] < rows["in_order"]


def test_a_stage_fingerprint_follows_its_data_file_not_only_its_config(tmp_path: Path, write_recipe) -> None:
    """Editing a data file (the recipe unchanged) changes the fingerprint of the stage that reads it and of
    the stages after it: a fingerprint that hashed the config alone would reuse a stage trained on other data."""
    from posttrain.fingerprints import stage_fingerprints

    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "What is 1 + 1?", "completion": "2"}\n')
    recipe = write_recipe(tmp_path, f"""\
        name: data-fingerprint
        seed: 0
        output_dir: {tmp_path / "run"}
        model: {{name_or_path: "builtin:micro"}}
        stages:
          - name: pretrain
            kind: pretrain
            data: {{source: "builtin:corpus", count: 16}}
            train: {{steps: 1, batch_size: 4, seq_len: 32}}
          - name: sft
            kind: sft
            data: {{source: "{data}"}}
            train: {{steps: 1, batch_size: 4, seq_len: 32}}
          - name: sft2
            kind: sft
            data: {{source: "builtin:arithmetic", count: 8, levels: [1]}}
            train: {{steps: 1, batch_size: 4, seq_len: 32}}
        """)
    before = stage_fingerprints(load_recipe(recipe))
    data.write_text('{"prompt": "What is 1 + 1?", "completion": "3"}\n')
    after = stage_fingerprints(load_recipe(recipe))
    assert after[0] == before[0] and after[1] != before[1] and after[2] != before[2]


def test_a_stage_fingerprint_follows_the_stages_its_config_names(tmp_path: Path, write_recipe) -> None:
    """A PPO stage trained against `stage:reward_model` is not reused once the reward model changes (its
    `from:` is sft, so the lineage alone would not see it); stages that name no other stage keep theirs."""
    from posttrain.fingerprints import stage_fingerprints

    recipe = write_recipe(tmp_path, f"""\
        name: reference-fingerprint
        seed: 0
        output_dir: {tmp_path / "run"}
        model: {{name_or_path: "builtin:micro"}}
        stages:
          - name: sft
            kind: sft
            data: {{source: "builtin:arithmetic", count: 8, levels: [1]}}
            train: {{steps: 1, batch_size: 4, seq_len: 32}}
          - name: reward_model
            kind: reward_model
            from: sft
            data: {{source: "builtin:preferences", count: 8, levels: [1]}}
            train: {{steps: 1, batch_size: 4, seq_len: 32}}
          - name: ppo
            kind: ppo
            from: sft
            data: {{source: "builtin:arithmetic", count: 8, levels: [1]}}
            reward: [{{source: reward_model, args: {{path: "stage:reward_model"}}}}]
            train: {{steps: 1, prompts_per_step: 4}}
        """)
    before = stage_fingerprints(load_recipe(recipe))
    after = stage_fingerprints(load_recipe(recipe, ["stages.reward_model.train.steps=2"]))
    assert after[0] == before[0] and after[1] != before[1] and after[2] != before[2]
