"""`kind: lm_eval`: lm-evaluation-harness on the loaded model, its offline arithmetic task against posttrain's
own `exact_match`, the chat-template choice, flattening, and bad input caught at recipe load."""

from __future__ import annotations

import importlib.metadata
import importlib.util

import pytest
from pydantic import ValidationError

from posttrain.config.common import DataSpec
from posttrain.config.evaluation import EvalConfig
from posttrain.data.packing import render_prompt
from posttrain.data.world import _NUMBER, arithmetic_rows, last_number
from posttrain.eval import evaluator
from posttrain.eval.evaluators import exact_match, greedy_generate
from posttrain.eval.lm_eval_harness import flatten_results, run_harness
from posttrain.eval.lm_eval_tasks import NUMBER_PATTERN, arithmetic_task_rows

pytest.importorskip("lm_eval", reason="the lm_eval extra (part of dev) is not installed")

ROWS = 60  # the first 60 rows of the task, as `limit: 60` and `count: 60` both take


def harness_config(**overrides) -> EvalConfig:
    values = dict(name="harness", kind="lm_eval", tasks=["posttrain_arithmetic"], limit=ROWS, batch_size=1)
    values.update(overrides)
    return EvalConfig(**values)


def test_task_reads_numbers_as_last_number_does() -> None:
    assert NUMBER_PATTERN == _NUMBER.pattern


def test_task_rows_are_the_builtin_test_split() -> None:
    rows = arithmetic_rows("test", ROWS, 0)
    task = arithmetic_task_rows()[:ROWS]
    assert [(t["question"], t["answer"]) for t in task] == [(r["messages"][0]["content"], r["answer"]) for r in rows]


def test_local_task_accuracy_equals_exact_match(trained_micro) -> None:
    """Same rows, same prompts, same greedy completions, same answer reading: the same accuracy, row by row."""
    model, tokenizer = trained_micro
    rows = arithmetic_rows("test", ROWS, 0)
    ours = exact_match(model, tokenizer, rows, EvalConfig(
        name="arith", kind="exact_match", data=DataSpec(source="builtin:arithmetic"), batch_size=1))
    completions = greedy_generate(model, tokenizer, [render_prompt(tokenizer, r["messages"]) for r in rows], 16, 1)

    raw = run_harness(model, tokenizer, harness_config())
    samples = sorted(raw["samples"]["posttrain_arithmetic"], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in samples] == [render_prompt(tokenizer, r["messages"]) for r in rows]
    assert [s["filtered_resps"][0] for s in samples] == [last_number(c) or "[invalid]" for c in completions]
    accuracy = raw["results"]["posttrain_arithmetic"]["exact_match,last_number"]
    assert ours["accuracy"] > 0
    assert accuracy == pytest.approx(ours["accuracy"])


def test_evaluator_flattens_metrics_and_records_provenance(micro) -> None:
    model, tokenizer = micro
    metrics = evaluator("lm_eval")(model, tokenizer, [], harness_config(limit=3, args={"gen_kwargs": {"max_gen_toks": 4}}))
    assert metrics["posttrain_arithmetic.n"] == 3.0
    assert 0.0 <= metrics["posttrain_arithmetic.exact_match,last_number"] <= 1.0
    assert metrics["chat_template"] == 1.0  # the built-in tokenizer has a chat template
    provenance = metrics.provenance
    assert provenance["lm_eval_version"] == importlib.metadata.version("lm_eval")
    assert len(provenance["task_config_hash"]["posttrain_arithmetic"]) == 16
    assert provenance["generation"]["posttrain_arithmetic"]["max_gen_toks"] == 4  # gen_kwargs override the task's
    assert provenance["chat_template"] is True


def test_base_model_prompts_go_without_chat_template(micro) -> None:
    model, tokenizer = micro
    tokenizer.chat_template = None  # a base model's tokenizer
    raw = run_harness(model, tokenizer, harness_config(limit=2))
    prompts = [s["arguments"][0][0] for s in raw["samples"]["posttrain_arithmetic"]]
    assert sorted(prompts) == sorted(r["question"] for r in arithmetic_task_rows()[:2])


def test_chat_template_can_be_forced_off(micro) -> None:
    model, tokenizer = micro
    metrics = evaluator("lm_eval")(model, tokenizer, [], harness_config(limit=1, apply_chat_template=False))
    assert metrics["chat_template"] == 0.0 and metrics.provenance["chat_template"] is False


def test_flatten_keeps_groups_and_stderrs_drops_text() -> None:
    results = {
        "mmlu": {"alias": "mmlu", "acc,none": 0.5, "acc_stderr,none": 0.01, "sample_len": 10},
        "mmlu_anatomy": {"alias": " - anatomy", "acc,none": 0.25, "acc_stderr,none": "N/A"},
    }
    assert flatten_results(results) == {"mmlu.acc,none": 0.5, "mmlu.acc_stderr,none": 0.01, "mmlu_anatomy.acc,none": 0.25}


def test_unknown_task_lists_close_matches() -> None:
    with pytest.raises(ValidationError, match=r"unknown lm-eval task\(s\): 'gsm8kk' \(close: gsm8k"):
        harness_config(tasks=["gsm8kk"])


def test_missing_lm_eval_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ValidationError, match=r"pip install 'posttrain\[lm_eval\]'") as info:
        harness_config()
    assert "lm-evaluation-harness, which is not installed" in str(info.value)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(kind="lm_eval", data=DataSpec(source="builtin:arithmetic"), tasks=["posttrain_arithmetic"]), "takes `tasks`, not `data`"),
        (dict(kind="lm_eval"), "needs `tasks`"),
        (dict(kind="exact_match"), "needs `data`"),
        (dict(kind="exact_match", data=DataSpec(source="builtin:arithmetic"), tasks=["x"]), "only `kind: lm_eval`"),
        (dict(kind="lm_eval", tasks=["posttrain_arithmetic"], args={"limit": 3}), r"\['limit'\] are set by"),
    ],
)
def test_fields_must_fit_the_kind(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EvalConfig(name="e", **fields)
