"""``generation.vllm.mode: server``: the recipe checks and the start-up check of the server, which need no
vLLM (the training process reaches the server over HTTP). A stand-in HTTP server on 127.0.0.1 answers
``/server_info`` as vLLM's does; the real server is tested in tests/vllm."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from posttrain.config.rl import GenerationSpec
from posttrain.errors import RecipeError
from posttrain.rl.vllm_server import EXTENSION, check_server
from tests.rl.conftest import rl_config

WHERE = "stage 'grpo': generation.vllm.server_url"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_generation(url: str) -> dict:
    return {"backend": "vllm", "max_new_tokens": 6, "vllm": {"mode": "server", "server_url": url}}


def test_server_mode_validates_without_vllm_in_the_training_environment() -> None:
    spec = GenerationSpec(**server_generation("http://127.0.0.1:8000"))
    assert (spec.backend, spec.vllm.mode, spec.vllm.weights_dir) == ("vllm", "server", "/dev/shm")


@pytest.mark.parametrize(
    ("generation", "key", "message"),
    [
        ({"backend": "vllm", "vllm": {"mode": "server"}}, "generation.vllm", r"mode: server needs server_url"),
        ({"backend": "vllm", "vllm": {"server_url": "http://127.0.0.1:8000"}}, "generation.vllm", r"server_url is set but mode is colocate"),
        ({"backend": "vllm", "vllm": {"mode": "server", "server_url": "127.0.0.1:8000"}}, "generation.vllm", r"must start with http://"),
        ({"backend": "vllm", "vllm": {"server_weights_dir": "/data/shared"}}, "generation.vllm", r"server_weights_dir is set but mode is colocate"),
        ({"backend": "auto", "vllm": {"mode": "server", "server_url": "http://127.0.0.1:8000"}}, "generation.backend", r"needs backend: vllm, not 'auto'"),
    ],
)
def test_server_settings_that_cannot_work_fail_validation_naming_the_key(generation, key, message) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        rl_config("grpo", generation=generation)
    assert f"1 validation error for GRPOConfig\n{key}\n" in str(raised.value)  # one error, at that key


def test_unreachable_server_is_one_line_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RecipeError) as raised:
        check_server(url, WHERE, 64)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{WHERE}: no vLLM server answers at {url} (")
    assert "Separate vLLM server" in message


class _StandIn(BaseHTTPRequestHandler):
    answer: dict | None = None  # None: 404, as vLLM without VLLM_SERVER_DEV_MODE=1

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps(self.answer).encode() if self.answer is not None else b'{"detail":"Not Found"}'
        self.send_response(200 if self.answer is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def stand_in():
    """``serve(answer)`` -> the URL of a server that answers /server_info with ``answer`` (None: 404)."""
    servers = []

    def serve(answer: dict | None) -> str:
        handler = type("Handler", (_StandIn,), {"answer": answer})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def info(extension: str | None, logprobs_mode: str, max_model_len: int) -> dict:
    return {"vllm_config": {
        "model_config": {"logprobs_mode": logprobs_mode, "max_model_len": max_model_len, "served_model_name": "ckpt", "model": "/m"},
        "parallel_config": {"worker_extension_cls": extension},
    }}


def test_server_without_dev_mode_is_named(stand_in) -> None:
    url = stand_in(None)
    with pytest.raises(RecipeError, match=rf"the vLLM server at {url} has no /server_info .*VLLM_SERVER_DEV_MODE=1"):
        check_server(url, WHERE, 64)


def test_server_started_without_what_posttrain_needs_lists_every_missing_flag(stand_in) -> None:
    url = stand_in(info(None, "raw_logprobs", 32))
    with pytest.raises(RecipeError) as raised:
        check_server(url, WHERE, 64)
    message = str(raised.value)
    assert message.startswith(f"{WHERE}: the vLLM server at {url} must be started with --worker-extension-cls {EXTENSION}")
    assert "--logprobs-mode processed_logprobs" in message and "--max-model-len 64 or more (it serves 32" in message


def test_a_server_started_as_documented_passes_and_names_its_model(stand_in) -> None:
    assert check_server(stand_in(info(EXTENSION, "processed_logprobs", 128)), WHERE, 64) == "ckpt"


def test_stage_with_an_unreachable_server_fails_before_its_model_loads(make_stage, monkeypatch) -> None:
    from posttrain.rl import setup

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(setup, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("the model loaded before the server check"))
    with pytest.raises(RecipeError, match=rf"^stage 'grpo': generation.vllm.server_url: no vLLM server answers at {url}"):
        make_stage(rl_config("grpo", generation=server_generation(url)))


def test_rlaif_generation_role_refuses_server_mode() -> None:
    from types import SimpleNamespace

    from posttrain.rlaif.runtime import role_backends

    context = SimpleNamespace(config=SimpleNamespace(name="critique"), input_checkpoint=None, model_spec=SimpleNamespace(name_or_path="builtin:micro"))
    with pytest.raises(RecipeError, match=r"stage 'critique': revise\.vllm\.mode is server, which only grpo/ppo rollouts use"):
        role_backends(context, response=GenerationSpec(), revise=GenerationSpec(**server_generation("http://127.0.0.1:8000")))


def test_weights_dir_that_is_not_a_folder_is_named(stand_in, tmp_path) -> None:
    from posttrain.config.rl import VLLMSpec
    from posttrain.rl.vllm_server import VLLMServerSampler

    spec = VLLMSpec(mode="server", server_url=stand_in(info(EXTENSION, "processed_logprobs", 128)), weights_dir=str(tmp_path / "absent"))
    with pytest.raises(RecipeError, match=rf"^generation.vllm.weights_dir: {tmp_path / 'absent'} is not a folder"):
        VLLMServerSampler([1], 0, spec, max_model_len=64)
