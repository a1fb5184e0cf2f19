"""Math verifier safety: costly answers score 0 fast from any thread; overrunning workers are replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from posttrain.verifiers.math_answer import MathVerifier, extract_final_answer
from posttrain.verifiers.worker_pool import WorkerPool

pytestmark = pytest.mark.timeout(120)  # a hang fails here instead of stalling CI

PATHOLOGICAL = [
    "\\boxed{9^{9^{9}}}",
    "\\boxed{10^{10^{10^{10}}}}",
    "\\boxed{(10^6)!}",
    "\\boxed{" + "9" * 100_000 + "}",
    "The answer is " + "1+" * 50_000 + "1",
    "x" * 100_000,
]


# Texts that used to hang the caller's thread before the worker's timeout could apply (extraction rescanned
# from each opening brace; a lazy regex group backtracked over trailing whitespace).
CALLER_THREAD_HANGS = {
    "20k-unclosed-boxed": "\\boxed{" * 20_000,
    "10k-nested-boxed": "\\boxed{" * 10_000 + "}" * 10_000,
    "answer-then-50k-spaces": "The answer is 3" + " " * 50_000,
    "answer-then-50k-tabs": "The answer is 3" + "\t" * 50_000,
    "colon-then-50k-spaces": "Answer: 3" + " " * 50_000,
    "20k-answer-is": "the answer is " * 20_000,
    "50k-answer-colon": "answer: " * 50_000,
}


@pytest.mark.parametrize("completion", list(CALLER_THREAD_HANGS.values()), ids=list(CALLER_THREAD_HANGS))
def test_extraction_is_fast_on_adversarial_text(completion: str) -> None:
    begin = time.monotonic()
    found = extract_final_answer(completion)
    assert time.monotonic() - begin < 1.0
    assert found.answer in (None, "3")


def test_trailing_whitespace_keeps_the_answer() -> None:
    assert extract_final_answer("The answer is 3" + " " * 50_000).answer == "3"
    assert extract_final_answer("so \\boxed{\\frac{1}{2}} and " + "\\boxed{" * 5000).answer == "\\frac{1}{2}"


@pytest.fixture(scope="module")
def verifier() -> MathVerifier:
    verifier = MathVerifier(timeout_s=2.0)
    verifier("\\boxed{1}", "x=1")  # start the workers outside the timed part
    return verifier


@pytest.mark.parametrize(
    "completion", PATHOLOGICAL, ids=["tower9", "tower10", "factorial", "100k-box", "100k-sum", "100k-text"]
)
def test_costly_answers_score_zero_quickly(verifier: MathVerifier, completion: str) -> None:
    begin = time.monotonic()
    result = verifier(completion, "3")
    assert time.monotonic() - begin < 3.0
    assert result.score == 0.0 and result.status == "wrong", result.reason


def test_costly_answers_from_a_worker_thread(verifier: MathVerifier) -> None:
    results: list[tuple[float, float]] = []

    def check() -> None:
        for completion in PATHOLOGICAL[:3]:
            begin = time.monotonic()
            results.append((verifier(completion, "7").score, time.monotonic() - begin))

    thread = threading.Thread(target=check)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [score for score, _ in results] == [0.0, 0.0, 0.0]
    assert all(seconds < 3.0 for _, seconds in results)
    assert verifier("\\boxed{x=7}", "7").score == 1.0  # still healthy afterwards


def test_a_worker_past_the_wall_clock_is_killed_and_the_answer_scores_zero() -> None:
    # timeout_s below math-verify's own 1 s alarm: only the host's kill can stop this one.
    verifier = MathVerifier(timeout_s=0.6)
    verifier("\\boxed{x=1}", "1")
    result = verifier("\\boxed{9^{9^{9}}}", "3")
    assert (result.status, result.score) == ("wrong", 0.0) and "timed out" in result.reason
    assert verifier("\\boxed{2^{10}}", "1024").passed  # a fresh worker took over


SLOW_WORKER = """
import sys, time
from posttrain.verifiers.worker_pool import serve, worker_setup

def handle(request, report):
    report("started")
    if request["kind"] == "spin":
        while True:  # ignores signals as C code holding the GIL would
            pass
    if request["kind"] == "crash":
        import os
        os._exit(3)
    if request["kind"] == "raise":
        raise RuntimeError("boom")
    if request["kind"] == "allocate":
        block = bytearray(2 << 30)
    return {"pid": __import__("os").getpid()}

worker_setup(sys.argv[1:])
serve(handle)
"""


def test_pool_kills_and_replaces_overrunning_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slow_worker_for_test.py").write_text(SLOW_WORKER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with WorkerPool("slow_worker_for_test", size=1, memory_limit_mb=512) as pool:
        first = pool.request({"kind": "ok"}, timeout_s=30)
        assert first.result is not None
        begin = time.monotonic()
        spun = pool.request({"kind": "spin"}, timeout_s=0.5)
        assert spun.timed_out and spun.progress == ["started"] and time.monotonic() - begin < 2
        crashed = pool.request({"kind": "crash"}, timeout_s=30)
        assert crashed.crashed
        raised = pool.request({"kind": "raise"}, timeout_s=30)
        assert raised.result is None and raised.exception == "RuntimeError: boom"
        too_big = pool.request({"kind": "allocate"}, timeout_s=30)  # 2 GiB against a 512 MiB address space
        assert too_big.result is None and (too_big.crashed or (too_big.exception or "").startswith("MemoryError"))
        after = pool.request({"kind": "ok"}, timeout_s=30)
        assert after.result is not None and after.result["pid"] != first.result["pid"]
        killed_pid = first.result["pid"]
    assert not Path(f"/proc/{killed_pid}").exists()


def test_workers_outlive_the_thread_that_started_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "slow_worker_for_test.py").write_text(SLOW_WORKER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with WorkerPool("slow_worker_for_test", size=1, memory_limit_mb=512) as pool:
        first: list = []
        thread = threading.Thread(target=lambda: first.append(pool.request({"kind": "ok"}, timeout_s=30)))
        thread.start()
        thread.join()
        time.sleep(0.2)
        second = pool.request({"kind": "ok"}, timeout_s=30)  # the worker a finished thread started still serves
        assert second.result == first[0].result
        os.kill(second.result["pid"], signal.SIGKILL)  # killed from outside while idle
        time.sleep(0.2)
        third = pool.request({"kind": "ok"}, timeout_s=30)
        assert third.result is not None and not third.crashed
