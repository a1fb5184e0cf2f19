"""The training loop: it learns, its schedule and data order are what they claim, gradient accumulation
does not change the update (TRL tests/invariant style), and a non-finite loss is caught."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from posttrain.config.common import TrainSpec
from posttrain.data.packing import encode_chats, pack
from posttrain.data.world import arithmetic_rows
from posttrain.errors import NonFiniteLossError
from posttrain.models.tiny import build_tiny_model
from posttrain.training.loop import causal_lm_loss_sum, total_steps, train_loop
from posttrain.training.schedule import lr_at, row_order, step_rows
from posttrain.training.metrics import MetricsWriter


def quiet(path: Path | None = None) -> MetricsWriter:
    return MetricsWriter(path, "test", stream=io.StringIO())


@pytest.fixture(scope="module")
def packed_rows() -> list[dict[str, list[int]]]:
    _, tokenizer = build_tiny_model("micro")
    examples = encode_chats(tokenizer, arithmetic_rows("train", 48, 0, (1, 2)))
    rows = pack(examples, 32, tokenizer.pad_token_id, split_examples=False)
    assert len(rows) >= 8
    return rows


def fresh_model():
    model, _ = build_tiny_model("micro", seed=0)
    return model


def spec(**overrides) -> TrainSpec:
    values = dict(steps=3, batch_size=8, seq_len=32, lr=1e-3, log_every=1)
    values.update(overrides)
    return TrainSpec(**values)


def test_loss_decreases_on_a_repeated_batch(packed_rows, accelerator) -> None:
    model = fresh_model()
    metrics = quiet()
    rows = packed_rows[:4]
    result = train_loop(model, rows, spec(steps=15, batch_size=4, lr=1e-2), seed=0, accelerator=accelerator, metrics=metrics)
    losses = [row["loss"] for row in metrics.rows]
    assert len(losses) == 15 == result.steps
    assert losses[-1] < 0.7 * losses[0]
    assert result.tokens == 15 * 4 * 32 and result.skipped_steps == 0


def test_lr_schedule_by_hand() -> None:
    cosine = spec(lr=1.0, warmup_steps=2, schedule="cosine")
    steps = 12
    assert lr_at(0, cosine, steps) == pytest.approx(0.5)
    assert lr_at(1, cosine, steps) == pytest.approx(1.0)
    assert lr_at(2, cosine, steps) == pytest.approx(1.0)  # decay starts after warm-up
    # halfway through the decay: floor 0.1 + 0.9 * 0.5 * (1 + cos(pi / 2)) = 0.55
    assert lr_at(7, cosine, steps) == pytest.approx(0.55)
    # a quarter: 0.1 + 0.9 * 0.5 * (1 + cos(pi / 4))
    assert lr_at(2 + 10 // 4, cosine, steps) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 2 / 10)))
    assert lr_at(12, cosine, steps) == pytest.approx(0.1)
    linear = spec(lr=2.0, warmup_steps=0, schedule="linear")
    assert lr_at(0, linear, 10) == pytest.approx(2.0)
    assert lr_at(5, linear, 10) == pytest.approx(2.0 * (1 - 0.9 * 0.5))
    constant = spec(lr=0.3, warmup_steps=4, schedule="constant")
    assert [lr_at(s, constant, 10) for s in (0, 3, 4, 9)] == pytest.approx([0.075, 0.3, 0.3, 0.3])


def test_total_steps_from_epochs() -> None:
    assert total_steps(spec(), 100, 1) == 3
    epochs = TrainSpec(epochs=2, batch_size=4, grad_accum=2)
    assert total_steps(epochs, 20, 1) == 5  # ceil(2 * 20 / 8)
    assert total_steps(epochs, 20, 2) == 3  # ceil(40 / 16)


def test_step_rows_is_deterministic_and_covers_every_row_once_per_epoch() -> None:
    num_rows, batch = 10, 4
    steps = [step_rows(num_rows, step, batch, seed=3) for step in range(5)]  # 20 rows = 2 epochs
    assert steps == [step_rows(num_rows, step, batch, seed=3) for step in range(5)]
    flat = [i for rows in steps for i in rows]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat == row_order(10, 3, 0) + row_order(10, 3, 1)
    assert row_order(10, 3, 0) != row_order(10, 3, 1)  # each epoch has its own order
    assert [step_rows(num_rows, s, batch, seed=4) for s in range(5)] != steps


def run(rows, batch_size: int, grad_accum: int, accelerator, dtype: torch.dtype = torch.float32, **overrides):
    model = fresh_model().to(dtype)
    metrics = quiet()
    train_loop(
        model, rows, spec(batch_size=batch_size, grad_accum=grad_accum, **overrides),
        seed=0, accelerator=accelerator, metrics=metrics,
    )
    return metrics.rows, {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("batch_size, grad_accum", [(4, 2), (2, 4), (1, 8)])
def test_gradient_accumulation_invariance(packed_rows, accelerator, batch_size: int, grad_accum: int) -> None:
    """Accumulating micro-batches changes only the order of the additions, so in float64 the update is the
    same to ~1e-15 relative per step. The comparison is made in float64 on purpose: in float32 the
    reassociation error (~1e-7 relative per sum) depends on the CPU's kernels (AVX2 vs AVX-512 blocking),
    and Adam divides it by small second moments, so a float32 tolerance would be tuned to one machine.
    A bug in the accumulation (a missing micro-batch, a wrong normaliser) moves the weights by ~1e-4 or more.
    """
    reference_metrics, reference_weights = run(packed_rows, 8, 1, accelerator, torch.float64)
    metrics, weights = run(packed_rows, batch_size, grad_accum, accelerator, torch.float64)
    assert len(metrics) == len(reference_metrics) == 3
    for ours, theirs in zip(metrics, reference_metrics):
        assert ours["loss_tokens"] == theirs["loss_tokens"]
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-12)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-10)
    for name, value in reference_weights.items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(weights[name], value, rtol=1e-10, atol=1e-12, msg=name)
    # and the weights did move (else equality would prove nothing)
    fresh = fresh_model().to(torch.float64)
    assert any(not torch.equal(value, p) for value, p in zip(reference_weights.values(), fresh.parameters()))


def test_gradient_accumulation_invariance_float32(packed_rows, accelerator) -> None:
    """The same in float32, the precision users train in. Three Adam steps at lr 1e-3 move a weight by up
    to 2.1e-3; reassociating the sums moved one by at most 1.0e-6 (AMD EPYC, AVX2), 6.3e-7 (same CPU,
    ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE) and 1.5e-6 (Intel Xeon, AVX-512), because Adam divides
    the rounding of small gradient entries by their small second moments. Counting one micro-batch twice
    moves a weight by 4.1e-3 (measured), so atol 2e-5 sits ~13x above every CPU measured and 200x below a
    real accumulation bug."""
    reference_metrics, reference_weights = run(packed_rows, 8, 1, accelerator)
    metrics, weights = run(packed_rows, 2, 4, accelerator)
    for ours, theirs in zip(metrics, reference_metrics):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
    for name, value in reference_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=0, atol=2e-5, msg=name)


def nan_after(good_steps: int):
    calls = {"n": 0}

    def loss_sum(model, batch):
        loss, count = causal_lm_loss_sum(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > good_steps else loss), count

    return loss_sum


def test_nan_loss_stops_naming_the_step(packed_rows, accelerator) -> None:
    with pytest.raises(NonFiniteLossError, match=r"loss=nan .* at step 2 "):
        train_loop(
            fresh_model(), packed_rows, spec(batch_size=4, on_nan="stop"), seed=0, accelerator=accelerator,
            metrics=quiet(), loss_sum_fn=nan_after(1),
        )


def test_huge_lr_is_caught(packed_rows, accelerator) -> None:
    with pytest.raises(NonFiniteLossError, match="at step"):
        train_loop(
            fresh_model(), packed_rows, spec(steps=4, batch_size=4, lr=1e30, max_grad_norm=None), seed=0,
            accelerator=accelerator, metrics=quiet(),
        )


def test_nan_loss_skipped_and_counted(packed_rows, accelerator, tmp_path: Path) -> None:
    model = fresh_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    metrics = quiet(tmp_path / "metrics.jsonl")
    result = train_loop(
        model, packed_rows, spec(batch_size=8, on_nan="skip"), seed=0, accelerator=accelerator, metrics=metrics,
        loss_sum_fn=nan_after(0),
    )
    assert result.skipped_steps == 3
    assert [row["nonfinite_skipped"] for row in metrics.rows] == [1, 2, 3]
    for name, p in model.named_parameters():  # no step was taken
        torch.testing.assert_close(p.detach(), before[name], rtol=0, atol=0)
    assert result.summary()["skipped_steps"] == 3


def test_metrics_jsonl_lines(packed_rows, accelerator, tmp_path: Path) -> None:
    path = tmp_path / "stage" / "metrics.jsonl"
    train_loop(
        fresh_model(), packed_rows, spec(steps=5, batch_size=4, log_every=2), seed=0, accelerator=accelerator,
        metrics=quiet(path),
    )
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 5]  # every log_every steps, and the last one
    for line in lines:
        assert line["stage"] == "test" and math.isfinite(line["loss"]) and line["lr"] > 0
        assert {"grad_norm", "loss_tokens", "tokens_per_s", "time"} <= set(line)


def test_metrics_writer_keeps_non_finite_values_as_strings(tmp_path: Path) -> None:
    stream = io.StringIO()
    writer = MetricsWriter(tmp_path / "m.jsonl", "sft", stream=stream)
    writer.log(1, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 0.5}, total=2)
    (line,) = (tmp_path / "m.jsonl").read_text().splitlines()
    row = json.loads(line)  # strict JSON: a bare NaN would still parse, so check the text too
    assert row["loss"] == "nan" and row["grad_norm"] == "inf" and row["lr"] == 0.5 and row["step"] == 1
    assert "NaN" not in line and "Infinity" not in line
    assert "[sft] step 1/2" in stream.getvalue() and "loss=nan" in stream.getvalue()
    silent = MetricsWriter(tmp_path / "other.jsonl", "sft", is_main=False, stream=stream)
    silent.log(1, {"loss": 1.0})
    assert not (tmp_path / "other.jsonl").exists()


def test_accumulation_left_in_accelerates_shared_state_is_ignored(packed_rows, accelerator) -> None:
    """Another trainer in the process (e.g. TRL's) may leave Accelerate's shared gradient state at N > 1
    accumulation steps; `accelerator.backward` would then divide our already-normalised loss by N."""
    reference_metrics, reference_weights = run(packed_rows, 4, 2, accelerator)
    accelerator.gradient_accumulation_steps = 4
    try:
        metrics, weights = run(packed_rows, 4, 2, accelerator)
    finally:
        accelerator.gradient_accumulation_steps = 1
    assert [m["grad_norm"] for m in metrics] == pytest.approx([m["grad_norm"] for m in reference_metrics], rel=1e-5)
    for name, value in reference_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_logged_loss_is_the_window_mean_and_throughput_counts_real_tokens(packed_rows, accelerator) -> None:
    """Logging every 2 steps logs the mean of the 2 steps' losses (as TRL does), not the second step's; with
    `real_tokens` the summary's tokens and tokens/s leave out the padding at the rows' ends."""
    from posttrain.data.packing import unpadded_length

    _, tokenizer = build_tiny_model("micro")
    every_step, every_two = quiet(), quiet()
    train_loop(fresh_model(), packed_rows, spec(steps=4, batch_size=4), seed=0, accelerator=accelerator, metrics=every_step)
    result = train_loop(
        fresh_model(), packed_rows, spec(steps=4, batch_size=4, log_every=2), seed=0, accelerator=accelerator,
        metrics=every_two, real_tokens=lambda row: unpadded_length(row, tokenizer.pad_token_id),
    )
    losses = [row["loss"] for row in every_step.rows]
    assert [row["loss"] for row in every_two.rows] == pytest.approx([sum(losses[:2]) / 2, sum(losses[2:]) / 2], rel=1e-6)
    used = [i for step in range(4) for i in step_rows(len(packed_rows), step, 4, 0)]
    real = sum(unpadded_length(packed_rows[i], tokenizer.pad_token_id) for i in used)
    assert result.tokens == real < 4 * 4 * 32  # the packed rows end in padding
    share = [row["padding_share"] for row in every_two.rows]
    assert all(0 < s < 1 for s in share)
