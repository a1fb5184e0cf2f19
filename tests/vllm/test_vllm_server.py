"""``generation.vllm.mode: server`` against a real vLLM server (vLLM's OpenAI-compatible server, started here
on 127.0.0.1 as the README tells users to start it), on the built-in micro model.

The server is started from a micro checkpoint with other weights (seed 1) than the policy's (seed 0): what
it generates with is what the trainer pushed. Run in the vLLM environment (`.ci/vllm_tests`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

import pytest
import torch

from posttrain.config.rl import VLLMSpec
from posttrain.rl.sampler import RolloutSampler, SamplingSettings, end_token_ids
from tests.rl.conftest import make_stage, rl_config  # noqa: F401  (make_stage is a fixture)
from tests.vllm.runs import check_sync_then_stale

pytestmark = pytest.mark.vllm

SERVED_LENGTH = 128  # the test stages ask for 120 prompt + 8 completion tokens


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """A vLLM server on a free port of 127.0.0.1, started as the README says; stopped after the module."""
    with served(tmp_path_factory.mktemp("server")) as url:
        yield url


@contextmanager
def served(folder, *extra: str, environment: dict | None = None):
    """Starts the server (``extra``: more of its arguments), yields its URL once it answers, stops it."""
    from posttrain.models.tiny import save_tiny_model

    checkpoint = save_tiny_model(folder / "micro_seed1", "micro", seed=1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint), "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", str(SERVED_LENGTH), "--enforce-eager",
        "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
        "--worker-extension-cls", "posttrain.rl.vllm_server_worker.WeightFileLoader", *extra,
    ]
    environment = {
        **os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", **(environment or {})
    }
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                pytest.fail(f"the vLLM server exited ({server.returncode}): {(folder / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not answer within 300 s: {(folder / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def server_generation(url: str, weights_dir: str, max_new_tokens: int = 8) -> dict:
    return {
        "backend": "vllm", "max_new_tokens": max_new_tokens, "max_prompt_tokens": SERVED_LENGTH - max_new_tokens,
        "vllm": {"mode": "server", "server_url": url, "weights_dir": weights_dir},
    }


PROMPTS = [[5, 6, 7], [8, 9, 10, 11], [5, 6, 7], [40, 41]]


def test_greedy_generations_from_the_server_equal_the_native_samplers(server_url, tmp_path) -> None:
    """The first rollout pushes the policy's weights over the server's own (another seed): greedy tokens
    then equal the native sampler's on the policy, and the weight file is gone once loaded."""
    check_push_then_greedy_equal(server_url, tmp_path)


def test_a_tensor_parallel_server_takes_the_pushed_weights(tmp_path_factory, tmp_path) -> None:
    """A server the user started with ``--tensor-parallel-size 2`` (two CPU workers, each with half of every
    sharded layer): each worker loads its shard of the pushed file, and greedy tokens equal the native
    sampler's as with one worker."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip(f"two workers need two cores; this process may use {cores}")
    # vLLM binds each CPU worker's threads to a NUMA node by default and refuses 2 workers on 1 node: one core each
    binding = {"VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}|{cores[1]}"}
    with served(tmp_path_factory.mktemp("server_tp2"), "--tensor-parallel-size", "2", environment=binding) as url:
        check_push_then_greedy_equal(url, tmp_path)


def test_a_server_that_sees_the_shared_folder_at_another_path_takes_the_push(server_url, tmp_path) -> None:
    """A server on another host mounts the trainer's ``weights_dir`` at a path of its own, named by
    ``server_weights_dir``; here the server's view is a link to the trainer's folder under another name."""
    trainer_view = tmp_path / "trainer_view"
    trainer_view.mkdir()
    (tmp_path / "server_view").symlink_to(trainer_view)
    check_push_then_greedy_equal(server_url, trainer_view, server_weights_dir=str(tmp_path / "server_view"))


def check_push_then_greedy_equal(server_url: str, weights_dir, **spec_fields) -> None:
    from posttrain.models.tiny import build_tiny_model
    from posttrain.rl.vllm_server import VLLMServerSampler

    model, tokenizer = build_tiny_model("micro")
    model.eval()
    spec = VLLMSpec(mode="server", server_url=server_url, weights_dir=str(weights_dir), **spec_fields)
    sampler = VLLMServerSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id, spec, max_model_len=64)
    settings = SamplingSettings(max_new_tokens=12, temperature=0.0)
    try:
        ours = sampler.sample(model, PROMPTS, settings)
        assert sampler.syncs == 1 and [list(p.iterdir()) for p in weights_dir.iterdir()] == [[]]
    finally:
        sampler.close()
    assert list(weights_dir.iterdir()) == []
    native = RolloutSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id).sample(model, PROMPTS, settings)
    assert torch.equal(ours.completion_ids_BC, native.completion_ids_BC)
    assert torch.equal(ours.completion_mask_BC, native.completion_mask_BC) and torch.equal(ours.truncated_B, native.truncated_B)
    torch.testing.assert_close(ours.logprobs_BC, native.logprobs_BC, atol=1e-5, rtol=0)  # float32 on both sides


def test_after_an_optimizer_step_server_logprobs_match_the_trainers(make_stage, server_url, tmp_path) -> None:
    """Step 0 samples and updates (lr 1e-2 moves every weight); step 1's rollout comes from the server after
    the push, and the trainer's recomputed log-probs of those completions equal the server's to float32
    rounding. Without the push (control) the same measure is far apart."""
    config = rl_config("grpo", generation=server_generation(server_url, str(tmp_path)), train={"steps": 3})
    check_sync_then_stale(make_stage(config).build_engine())


def test_two_processes_share_one_server_as_one_process_does(server_url, tmp_path, accelerator) -> None:
    """`accelerate launch` with 2 CPU processes against one server: the first process pushes the weights, the
    other waits at the barrier, each samples its half. Step 1 equals 1 process on the whole batch; step 2
    (after a push) still matches the trainer in both runs."""
    from tests.vllm.runs import two_processes_and_one

    generation = (
        "{max_new_tokens: 6, max_prompt_tokens: 120, temperature: 1.0, backend: vllm, "
        f'vllm: {{mode: server, server_url: "{server_url}", weights_dir: "{tmp_path}"}}}}'
    )
    two, one = two_processes_and_one(tmp_path, accelerator, generation)
    assert [r["step"] for r in two] == [1, 2]
    assert two[0]["completion_tokens"] == one[0]["completion_tokens"]
    assert two[0]["reward/total/mean"] == pytest.approx(one[0]["reward/total/mean"], abs=1e-9)
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in two + one), (two, one)


def test_a_resumed_run_pushes_the_resumed_weights_before_its_first_rollout(make_stage, server_url, tmp_path, accelerator) -> None:
    from tests.vllm.runs import resumed_run_row

    row = resumed_run_row(make_stage, tmp_path, accelerator, server_generation(server_url, str(tmp_path)))
    assert row["rollout/logprob_diff_max"] < 1e-4, row["rollout/logprob_diff_max"]


def test_a_server_that_cannot_see_the_weights_file_is_an_error_naming_the_setting(server_url, tmp_path) -> None:
    """The server is asked to read a path it does not have (a shared folder not mounted there): the trainer
    stops with the paths on both sides and the settings, and deletes its file; the server still takes the
    next push."""
    from posttrain.models.tiny import build_tiny_model
    from posttrain.rl.vllm_server import VLLMServerSampler

    model, tokenizer = build_tiny_model("micro")
    absent = tmp_path / "not_mounted"
    spec = VLLMSpec(mode="server", server_url=server_url, weights_dir=str(tmp_path / "w"), server_weights_dir=str(absent))
    (tmp_path / "w").mkdir()
    sampler = VLLMServerSampler(end_token_ids(model, tokenizer), tokenizer.pad_token_id, spec, max_model_len=64)
    settings = SamplingSettings(max_new_tokens=4, temperature=0.0)
    try:
        with pytest.raises(RuntimeError) as raised:
            sampler.sample(model, PROMPTS, settings)
        message = str(raised.value)
        assert f"could not load the weights the trainer wrote to {tmp_path / 'w'}" in message
        assert f"(asked to read {absent}/" in message and "generation.vllm.server_weights_dir" in message
        assert [list(p.iterdir()) for p in (tmp_path / "w").iterdir()] == [[]]  # the file is gone
    finally:
        sampler.close()
    (tmp_path / "w2").mkdir()
    check_push_then_greedy_equal(server_url, tmp_path / "w2")  # the server still takes a push it can read
