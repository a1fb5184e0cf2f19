"""The vLLM rollout backend against the native sampler and the trainer, on the built-in micro model.

Run in the vLLM environment (`.ci/run` builds `.venv-vllm`): ``python -m pytest -m vllm tests/vllm``. The
main environment deselects these tests (`-m 'not vllm'` in pyproject's addopts): vLLM pins an older
transformers than the main environment's.
"""

from __future__ import annotations

import pytest
import torch

from posttrain.config.rl import VLLMSpec
from posttrain.rl.sampler import RolloutSampler, SamplingSettings, end_token_ids
from tests.rl.conftest import make_stage, rl_config  # noqa: F401  (make_stage is a fixture)
from tests.vllm.runs import check_sync_then_stale

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def micro():
    from posttrain.models.tiny import build_tiny_model

    model, tokenizer = build_tiny_model("micro")
    return model.eval(), tokenizer


def vllm_sampler(model, tokenizer, max_model_len: int = 64):
    from posttrain.rl.vllm_sampler import VLLMSampler

    return VLLMSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id, VLLMSpec(), max_model_len=max_model_len)


PROMPTS = [[5, 6, 7], [8, 9, 10, 11], [5, 6, 7], [40, 41]]


def test_greedy_generations_equal_the_native_samplers(micro) -> None:
    model, tokenizer = micro
    settings = SamplingSettings(max_new_tokens=12, temperature=0.0)
    sampler = vllm_sampler(model, tokenizer)
    try:
        ours = sampler.sample(model, PROMPTS, settings)
    finally:
        sampler.close()
    native = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id).sample(model, PROMPTS, settings)
    assert torch.equal(ours.completion_ids_BC, native.completion_ids_BC)
    assert torch.equal(ours.completion_mask_BC, native.completion_mask_BC)
    assert torch.equal(ours.truncated_B, native.truncated_B) and torch.equal(ours.prompt_ids_BP, native.prompt_ids_BP)
    # float32 on both sides: the same log-softmax up to kernel rounding
    torch.testing.assert_close(ours.logprobs_BC, native.logprobs_BC, atol=1e-5, rtol=0)


def test_seeded_rows_do_not_depend_on_the_batch_they_are_sampled_in(micro) -> None:
    """A completion's seed comes from its row in the global batch: the rows of two half batches equal the
    whole batch's (what lets each process of a launch sample its share)."""
    from posttrain.rl.sampler import RowNoise

    model, tokenizer = micro
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, top_k=50)
    sampler = vllm_sampler(model, tokenizer)
    try:
        whole = sampler.sample(model, PROMPTS, settings, noise=RowNoise(7, [0, 1, 2, 3]))
        first = sampler.sample(model, PROMPTS[:2], settings, noise=RowNoise(7, [0, 1]))
        second = sampler.sample(model, PROMPTS[2:], settings, noise=RowNoise(7, [2, 3]))
    finally:
        sampler.close()
    halves = [row for part in (first, second) for row in part.completion_ids_BC[:, : part.lengths_B.max()].tolist()]
    assert [row[: int(n)] for row, n in zip(whole.completion_ids_BC.tolist(), whole.lengths_B)] == [
        row[: int(n)] for row, n in zip(halves, torch.cat([first.lengths_B, second.lengths_B]))
    ]
    assert whole.completion_ids_BC[0].tolist() != whole.completion_ids_BC[2].tolist()  # same prompt, other row


def test_after_an_optimizer_step_engine_logprobs_match_the_trainers(make_stage) -> None:
    """Step 0 samples and updates (lr 1e-2 moves every weight); step 1's rollout comes from the synced
    engine, and the trainer's recomputed log-probs of those completions equal vLLM's to float32 rounding.
    Without the sync (control) the same measure is far apart."""
    config = rl_config("grpo", generation={"backend": "vllm", "max_new_tokens": 8}, train={"steps": 3})
    check_sync_then_stale(make_stage(config).build_engine())


def test_a_bfloat16_engine_is_synced_and_its_gap_to_the_float32_trainer_is_logged(make_stage) -> None:
    """``generation.vllm.dtype: bfloat16`` (the fast setting on CPUs with AVX512-BF16, and what RL frameworks
    run on GPUs): the float32 weights are cast as they are copied, so after a step the engine is within bf16
    rounding of the trainer, far closer than without the sync; the gap is what `rollout/sampler_kl` and
    `train.tis_cap` are for."""
    config = rl_config(
        "grpo", generation={"backend": "vllm", "max_new_tokens": 8, "vllm": {"dtype": "bfloat16"}}, train={"steps": 3}
    )
    # measured on the micro model (AMD EPYC, AVX512-BF16): 0.0035 synced, 0.83 stale
    rows = check_sync_then_stale(make_stage(config).build_engine(), synced_below=0.05)
    assert rows["synced"]["rollout/logprob_diff_max"] > 1e-4  # bf16: the engine is not float32 (else dtype was ignored)


def test_engine_is_built_from_the_weights_the_policy_has_at_its_first_rollout(micro) -> None:
    """What makes resume work: the engine is built lazily, so restored weights are the ones it samples with."""
    from posttrain.models.tiny import build_tiny_model
    from posttrain.rl.policy import ActorCritic, score_completions

    model, tokenizer = build_tiny_model("micro")
    sampler = vllm_sampler(model, tokenizer)
    with torch.no_grad():  # stands for `restore`: weights change after the sampler exists, before it samples
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    try:
        rollout = sampler.sample(model, PROMPTS, SamplingSettings(max_new_tokens=8, temperature=1.0))
    finally:
        sampler.close()
    trainer_BC = score_completions(ActorCritic(model.eval()), rollout, 1.0).logprobs_BC.detach()
    gap = ((trainer_BC - rollout.logprobs_BC).abs() * rollout.completion_mask_BC).max()
    assert gap < 1e-4, gap


def test_lora_policy_is_synced_with_its_adapters_merged(make_stage) -> None:
    config = rl_config(
        "grpo", generation={"backend": "vllm", "max_new_tokens": 8}, train={"steps": 2},
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    )
    engine = make_stage(config).build_engine()
    try:
        engine.step(0)
        row = engine.step(1)
        assert row["rollout/logprob_diff_max"] < 1e-4, row["rollout/logprob_diff_max"]
    finally:
        engine.sampler.close()


def test_grpo_with_vllm_learns_like_native(make_stage) -> None:
    """The engine test's learning check (shorter answers score higher), once per backend: both must raise
    the reward by as much as the native test asks, and vLLM must end within 0.15 of native."""
    results = {}
    for backend in ("native", "vllm"):
        config = rl_config(
            "grpo", group_size=8, generation={"backend": backend, "max_new_tokens": 8}, train={"steps": 12}, name=f"grpo_{backend}"
        )
        stage = make_stage(config)
        stage.train()
        rewards = [row["reward/total/mean"] for row in stage.metrics.rows]
        results[backend] = (sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3, rewards)
    for backend, (first, last, rewards) in results.items():
        assert last > first + 0.1, (backend, rewards)
    assert results["vllm"][1] > results["native"][1] - 0.15, results


def test_rlaif_role_model_generates_with_vllm_as_with_native(micro) -> None:
    """`constitutional` / `ai_judge` generation roles with ``backend: vllm``: greedy answers equal native ones."""
    from posttrain.rlaif.language_model import RoleModel

    model, tokenizer = micro
    role = RoleModel(model, tokenizer, batch_size=4, max_prompt_tokens=64)
    settings = SamplingSettings(max_new_tokens=10, temperature=0.0)
    texts = ["what is 2 + 3?", "say hello", "what is 7 + 1?"]
    try:
        assert role.answer(texts, settings, None, backend="vllm") == role.answer(texts, settings, None)
    finally:
        role.close()
    assert list(role.samplers) == ["native"]


def test_a_generation_roles_vllm_settings_reach_its_engine(micro) -> None:
    """A role's own `generation.vllm` section builds its engine (here the key/value cache size, which vLLM's
    CPU backend reads from VLLM_CPU_KVCACHE_SPACE when the engine starts), and the same settings reuse it."""
    import os

    from posttrain.config.rl import VLLMSpec
    from posttrain.rlaif.language_model import RoleModel

    model, tokenizer = micro
    role = RoleModel(model, tokenizer, batch_size=4, max_prompt_tokens=64)
    settings = SamplingSettings(max_new_tokens=4, temperature=0.0)
    try:
        role.answer(["what is 2 + 3?"], settings, None, backend="vllm", vllm=VLLMSpec(cpu_kv_cache_gib=2))
        assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "2"
        (engine,) = [s for k, s in role.samplers.items() if k != "native"]
        assert engine.spec.cpu_kv_cache_gib == 2
        role.answer(["what is 2 + 3?"], settings, None, backend="vllm", vllm=VLLMSpec(cpu_kv_cache_gib=2))
        assert len(role.samplers) == 2  # the same settings reuse the engine
    finally:
        role.close()


def test_two_processes_each_with_an_engine_sample_what_one_process_samples(tmp_path, accelerator) -> None:
    """`accelerate launch` with 2 CPU processes (DDP over gloo): each process builds its own engine over its
    half of the prompts, in the launcher's process group, and the run ends cleanly (vLLM's shutdown would
    destroy that group: `VLLMSampler.close`). Step 1 (same weights) equals 1 process on the whole batch;
    after the synced update, the engines still match the trainer."""
    from tests.vllm.runs import two_processes_and_one

    two, one = two_processes_and_one(tmp_path, accelerator, "{max_new_tokens: 6, temperature: 1.0, backend: vllm}")
    assert [r["step"] for r in two] == [1, 2]
    assert two[0]["completion_tokens"] == one[0]["completion_tokens"]
    assert two[0]["reward/total/mean"] == pytest.approx(one[0]["reward/total/mean"], abs=1e-9)
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in two), two


def test_zero3_engines_get_the_whole_weights_after_every_step(tmp_path, accelerator) -> None:
    """ZeRO-3 (recipes/accelerate/zero3.yaml, 2 CPU processes): each process holds a shard of every weight, and
    the engines are synced inside `gathered_parameters`, so what reaches vLLM is the whole weights: after the
    update, the engines' log-probs still match the trainer's, and step 1 equals one process's."""
    from tests.vllm.runs import two_processes_and_one

    two, one = two_processes_and_one(
        tmp_path, accelerator, "{max_new_tokens: 6, temperature: 1.0, backend: vllm}", config="zero3.yaml"
    )
    assert [r["step"] for r in two] == [1, 2]
    assert two[0]["reward/total/mean"] == pytest.approx(one[0]["reward/total/mean"], abs=1e-9)
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in two), two


def test_a_resumed_run_builds_its_engine_from_the_resumed_weights(make_stage, tmp_path, accelerator) -> None:
    from tests.vllm.runs import resumed_run_row

    row = resumed_run_row(make_stage, tmp_path, accelerator, {"backend": "vllm", "max_new_tokens": 8})
    assert row["rollout/logprob_diff_max"] < 1e-4, row["rollout/logprob_diff_max"]


def test_the_gpu_benchmark_script_runs_on_a_cpu(tmp_path) -> None:
    """benchmarks/gpu_rl.py has never had a GPU: its ``--smoke`` mode runs our side of it end to end at a small
    shape, so the script is known to work when one is lent (a measurement it is not)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    figures = tmp_path / "smoke.json"
    command = [sys.executable, str(root / "benchmarks" / "gpu_rl.py"), "--smoke", "--sides", "ours", "--json", str(figures)]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    seconds, tokens, share = json.loads(figures.read_text())["summary"]["ours"]
    assert seconds > 0 and tokens > 0 and 0 < share < 1, (seconds, tokens, share)
