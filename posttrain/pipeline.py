"""Running a recipe: chain stages, reuse unchanged ones, evaluate every checkpoint, apply gates.

Run directory layout (``runs/NAME`` by default)::

    recipe.yaml                      the recipe as run (after overrides)
    evaluations.json                 the per-stage evaluation table
    stages/<stage>/checkpoint/       HF-format model + tokenizer (safetensors)
    stages/<stage>/manifest.json     fingerprint, input hash, data hashes, versions, summary
    stages/<stage>/metrics.jsonl     per-step training metrics
    stages/<stage>/eval.json         evaluation results of this checkpoint
    stages/<stage>/samples.json      greedy generations on fixed prompts, for the report
    tensorboard/<stage>/             TensorBoard event files (`logging.report_to`)
    report.html, report.md           the run report (written by `posttrain.run` / `posttrain report`)

A stage's fingerprint hashes its config, the fingerprint of the checkpoint it starts from, its data and the
seed. A stage whose manifest records the same fingerprint (and whose checkpoint is complete) is reused;
otherwise it and everything downstream of it re-run. The manifest is written last, after the checkpoint is
in place, so a crash mid-stage leaves nothing that a later run would take as finished.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.config.common import DataSpec, Strict
from posttrain.config.stages import StageConfig
from posttrain.data.stage_outputs import bind_stage_outputs, linked_data_fingerprint
from posttrain.errors import GateFailed
from posttrain.recipe import LoadedRecipe, data_specs, resolve_data_path
from posttrain.run_paths import check_run_folder, stage_folder


@dataclass
class StageRecord:
    name: str
    fingerprint: str
    checkpoint: Path
    reused: bool
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dump(model: Strict) -> Any:
    return model.model_dump(mode="json", by_alias=True)


@functools.lru_cache(maxsize=1)
def builtin_generators_digest() -> str:
    """A hash of the code that generates built-in data (`posttrain/data/*.py`): a change to a generator
    (new answer styles, other wrong answers) changes the data, so stages trained on the old data re-run."""
    digest = hashlib.sha256()
    for source in sorted((Path(__file__).parent / "data").glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def data_fingerprint(spec: DataSpec, recipe_dir: Path, seed: int) -> str:
    """Built-in data: its spec, the seed, the generators' code and the constitution file it names; files:
    their content; hub datasets: their name and split."""
    path = resolve_data_path(spec.source, recipe_dir)
    if path is None:
        if not spec.source.startswith("builtin:"):
            return _hash([_dump(spec), seed])
        constitution = resolve_data_path(spec.constitution, recipe_dir) if spec.constitution else None
        text = constitution.read_text() if constitution is not None and constitution.is_file() else None
        return _hash([_dump(spec), seed, builtin_generators_digest(), text])
    digest = hashlib.sha256(json.dumps(_dump(spec), sort_keys=True).encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def base_model_fingerprint(loaded: LoadedRecipe) -> str:
    spec = loaded.recipe.model
    local = Path(spec.name_or_path)
    if not spec.name_or_path.startswith("builtin:") and local.exists():
        from posttrain.models.checkpoint import weights_hash

        return _hash([_dump(spec), weights_hash(local)])
    import posttrain

    return _hash([_dump(spec), posttrain.__version__])


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("posttrain", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _write_json(path: Path, obj: Any) -> None:
    """Writes JSON atomically (temporary file, flush, rename)."""
    temp = path.with_name(path.name + f".tmp-{os.getpid()}")
    with temp.open("w") as handle:
        json.dump(obj, handle, indent=2, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class Pipeline:
    """Runs a loaded recipe stage by stage."""

    def __init__(
        self,
        loaded: LoadedRecipe,
        accelerator: Any | None = None,
        log=print,
        *,
        resume: bool = False,
        restart_changed: bool = False,
    ):
        """``resume``: continue the first unfinished stage from its newest saved training state (else it
        starts afresh and its old states are deleted); ``restart_changed``: with ``resume``, start a stage
        whose saved state was made with another config or data afresh instead of refusing."""
        self.loaded = loaded
        self.resume, self.restart_changed = resume, restart_changed
        self.recipe = loaded.recipe
        self.run_dir = loaded.run_dir()
        self.log = log
        self._accelerator = accelerator
        self.records: dict[str, StageRecord] = {}
        self.table: list[dict[str, Any]] = []

    @property
    def accelerator(self):
        if self._accelerator is None:
            from posttrain.distributed import make_accelerator

            self._accelerator = make_accelerator()
        return self._accelerator

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints; with one process that is this one."""
        return self.accelerator.is_main_process

    def say(self, message: str) -> None:
        if self.is_main:
            self.log(message)

    def stage_dir(self, name: str) -> Path:
        return stage_folder(self.run_dir, name)  # a plain name, no symbolic link followed

    def fingerprints(self) -> list[str]:
        """The fingerprint of every stage, in order (cheap: hashes configs and data files only)."""
        out: list[str] = []
        base = base_model_fingerprint(self.loaded)
        by_name: dict[str, str] = {}
        for index, stage in enumerate(self.recipe.stages):
            parent = self.recipe.parent_of(index)
            data = [
                linked_data_fingerprint(spec, self.loaded.directory, self.recipe.seed, by_name)
                or data_fingerprint(spec, self.loaded.directory, self.recipe.seed)
                for _, spec in data_specs(stage)
            ]
            fingerprint = _hash([fingerprint_config(stage), by_name[parent] if parent else base, data, self.recipe.seed])
            by_name[stage.name] = fingerprint
            out.append(fingerprint)
        return out

    def is_complete(self, name: str, fingerprint: str, input_checkpoint: Path | None) -> bool:
        """A stage is finished when its manifest is complete, matches its fingerprint, and was trained from
        the weights its parent holds now (a parent re-trained to other weights invalidates it)."""
        manifest = _read_json(self.stage_dir(name) / "manifest.json")
        checkpoint = self.stage_dir(name) / "checkpoint"
        return bool(
            manifest
            and manifest.get("complete")
            and manifest.get("fingerprint") == fingerprint
            and manifest.get("input_hash") == _input_hash(input_checkpoint)
            and checkpoint.is_dir()
        )

    def run(self) -> list[dict[str, Any]]:
        """Runs (or reuses) every stage and its evaluations; returns the evaluation table."""
        if self.is_main:
            check_run_folder(self.run_dir)  # before anything is written: see posttrain/run_paths.py
            _check_writable(self.run_dir)
            (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(self.loaded.raw, sort_keys=False))
        self.accelerator.wait_for_everyone()
        fingerprints = self.fingerprints()
        if self.recipe.evaluate_base and self.recipe.evaluations:
            self._evaluate("base", None, _hash(["base", base_model_fingerprint(self.loaded)]))
        for index, (stage, fingerprint) in enumerate(zip(self.recipe.stages, fingerprints)):
            parent = self.recipe.parent_of(index)
            record = self._run_stage(index, fingerprint, self.records[parent].checkpoint if parent else None)
            self.records[stage.name] = record
            if stage.evaluate and self.recipe.evaluations:
                manifest = _read_json(self.stage_dir(stage.name) / "manifest.json")
                record.metrics = self._evaluate(stage.name, record.checkpoint, manifest["checkpoint_hash"])
                self._check_gates(stage.name, self.recipe.evaluated_ancestor(index), record.metrics)
        return self.table

    def _run_stage(self, index: int, fingerprint: str, input_checkpoint: Path | None) -> StageRecord:
        stage = self.recipe.stages[index]
        folder = self.stage_dir(stage.name)
        checkpoint = folder / "checkpoint"
        if self.is_complete(stage.name, fingerprint, input_checkpoint):
            self.say(f"[{stage.name}] reused (config, inputs and data unchanged): {checkpoint}")
            manifest = _read_json(folder / "manifest.json")
            return StageRecord(stage.name, fingerprint, checkpoint, True, summary=manifest.get("summary", {}))
        from posttrain.stages import StageContext, stage_class

        accelerator = self.accelerator
        if accelerator.is_main_process:
            _check_writable(folder)
        accelerator.wait_for_everyone()
        checkpoints = self._train_checkpoints(index, fingerprint, input_checkpoint)
        if accelerator.is_main_process:
            stale = ["manifest.json", "eval.json"] + ([] if checkpoints.resume_from else ["metrics.jsonl"])
            for name in stale:
                (folder / name).unlink(missing_ok=True)
        accelerator.wait_for_everyone()
        self.say(f"[{stage.name}] running {stage.kind} (from {self.recipe.parent_of(index) or 'base model'})")
        context = StageContext(
            config=bind_stage_outputs(stage, self.run_dir / "stages"),
            model_spec=self.recipe.model,
            input_checkpoint=input_checkpoint,
            stage_dir=folder,
            recipe_dir=self.loaded.directory,
            seed=self.recipe.seed,
            accelerator=accelerator,
            metrics=self._metrics_writer(stage, folder, accelerator.is_main_process, checkpoints.resume_from),
            checkpoints=checkpoints,
        )
        _seed_everything(self.recipe.seed)
        started = time.time()
        try:
            runner = stage_class(stage.kind)(context)
            summary = runner.train()
        finally:
            context.metrics.close()
        checkpoint_hash = runner.save(checkpoint)  # every process: ZeRO-3 gathers its shards; the main one writes
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_json(
                folder / "manifest.json",
                {
                    "stage": stage.name,
                    "kind": stage.kind,
                    "fingerprint": fingerprint,
                    "config_hash": _hash(_dump(stage)),
                    "config": _dump(stage),
                    "input": str(input_checkpoint) if input_checkpoint else self.recipe.model.name_or_path,
                    "input_hash": _input_hash(input_checkpoint),
                    "data": {path: data_fingerprint(spec, self.loaded.directory, self.recipe.seed) for path, spec in data_specs(stage)},
                    "checkpoint_hash": checkpoint_hash,
                    "versions": library_versions(),
                    "summary": summary,
                    "started": started,
                    "finished": time.time(),
                    "complete": True,
                },
            )
        accelerator.wait_for_everyone()  # the manifest is in place before any process reads it
        if accelerator.is_main_process:  # the stage's checkpoint is in place: its training states are spent
            shutil.rmtree(folder / "resume", ignore_errors=True)
        self.say(f"[{stage.name}] finished in {time.time() - started:.1f}s -> {checkpoint}")
        del runner
        return StageRecord(stage.name, fingerprint, checkpoint, False, summary=summary)

    def _train_checkpoints(self, index: int, fingerprint: str, input_checkpoint: Path | None):
        """The stage's resumable training state: where it goes, and which saved one (if any) to continue from.

        Cleans half-written folders a killed process left. Without ``resume`` old states are deleted; with it
        the newest complete one is verified and compared with the stage's config, data and parent before
        anything is loaded, and ``metrics.jsonl`` is cut back to its step.
        """
        from posttrain.errors import CheckpointError
        from posttrain.training.state import (
            TrainCheckpoints, describe_changes, latest_checkpoint, read_state, remove_stale_staging,
            verify_checkpoint,
        )

        stage = self.recipe.stages[index]
        folder = self.stage_dir(stage.name)
        resume_dir = folder / "resume"
        parent = self.recipe.parent_of(index)
        identity = {
            "fingerprint": fingerprint,
            "config": fingerprint_config(stage),
            "data": {path: data_fingerprint(spec, self.loaded.directory, self.recipe.seed) for path, spec in data_specs(stage)},
            "parent": self.records[parent].fingerprint if parent else base_model_fingerprint(self.loaded),
            "input_hash": _input_hash(input_checkpoint),
            "seed": self.recipe.seed,
            "world_size": self.accelerator.num_processes,
        }
        if self.accelerator.is_main_process:
            for removed in remove_stale_staging(folder) + remove_stale_staging(resume_dir):
                self.say(f"[{stage.name}] removed a half-written checkpoint: {removed}")
        self.accelerator.wait_for_everyone()
        latest = latest_checkpoint(resume_dir)
        spec = getattr(stage, "train", None)  # stages that train nothing (e.g. `constitutional`) save no state
        keep = TrainCheckpoints(
            resume_dir, getattr(spec, "save_every", None), getattr(spec, "keep_last", 1), identity, self.accelerator
        )
        if latest is None:
            if self.resume:
                self.say(f"[{stage.name}] no saved training state to resume from: starting the stage")
            return keep
        state = read_state(latest)
        changes = describe_changes(state["identity"], identity)
        if not self.resume or changes:
            if self.resume and not self.restart_changed:
                raise CheckpointError(
                    f"stage {stage.name!r}: the training state saved at {latest} was made with other settings:\n  "
                    + "\n  ".join(changes)
                    + "\nUndo the change to continue from it, or pass --restart-changed to start this stage afresh"
                )
            why = "it was made with other settings" if changes else "--resume was not given"
            self.say(f"[{stage.name}] starting afresh, deleting the saved training state at {latest} ({why})")
            if self.accelerator.is_main_process:
                shutil.rmtree(resume_dir, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            return keep
        verify_checkpoint(latest)
        if self.accelerator.is_main_process:
            _truncate_metrics(folder / "metrics.jsonl", state["step"])
        self.say(f"[{stage.name}] resuming from step {state['step']}: {latest}")
        keep.resume_from = latest
        return keep

    def _metrics_writer(self, stage: StageConfig, folder: Path, is_main: bool, resume_from: Path | None):
        """The stage's metrics writer: metrics.jsonl, the recipe's trackers, and the progress display."""
        from posttrain.training.metrics import MetricsWriter
        from posttrain.training.state import read_state
        from posttrain.training.trackers import open_trackers

        settings = self.recipe.logging
        resume_step = read_state(resume_from)["step"] if resume_from is not None else None
        trackers = (
            open_trackers(settings, self.run_dir, self.recipe.name, stage.name, _dump(stage), resume_step)
            if is_main else []
        )
        return MetricsWriter(folder / "metrics.jsonl", stage.name, is_main, progress=settings.progress, trackers=trackers)

    def _evaluate(self, name: str, checkpoint: Path | None, model_hash: str) -> dict[str, float]:
        """Evaluates one checkpoint (`_evaluate_checkpoint`) and adds its row to the evaluation table.

        With several processes the main one evaluates and writes; the others receive its metrics, so every
        process applies the gates to the same table and stops (or goes on) together.
        """
        metrics = self._evaluate_checkpoint(name, checkpoint, model_hash) if self.is_main else None
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            metrics = broadcast_object_list([metrics], from_process=0)[0]
        self.table.append({"stage": name, **metrics})
        if self.is_main:
            _write_json(self.run_dir / "evaluations.json", self.table)
        return metrics

    def _evaluate_checkpoint(self, name: str, checkpoint: Path | None, model_hash: str) -> dict[str, float]:
        """Runs every evaluation on one checkpoint, reusing results stored for the same model and config.

        A reward-model checkpoint is loaded as a sequence classifier and gets only the evaluations that
        score reward models (`pairwise_accuracy`); a language model gets all the others, and writes the
        run report's sample generations (`posttrain.report.samples`).
        """
        from posttrain.eval.evaluators import evaluator
        from posttrain.eval.preference import evaluated_model_type, evaluation_rows
        from posttrain.models.checkpoint import load_model_and_tokenizer
        from posttrain.models.reward_head import is_reward_model_checkpoint, load_reward_model
        from posttrain.report.samples import SamplePlan

        folder = self.stage_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        key = _hash([model_hash, [_dump(e) for e in self.recipe.evaluations], self.recipe.seed])
        stored = _read_json(folder / "eval.json")
        reused = bool(stored and stored.get("key") == key)
        model_type = "reward_model" if is_reward_model_checkpoint(checkpoint) else "causal_lm"
        samples = SamplePlan(self.recipe, self.loaded.directory)
        sample = model_type == "causal_lm" and samples.enabled() and not samples.is_current(folder, model_hash)
        metrics = stored["metrics"] if reused else {}
        if not reused or sample:
            started = time.time()
            if model_type == "reward_model":
                model, tokenizer = load_reward_model(checkpoint)
            else:
                model, tokenizer = load_model_and_tokenizer(self.recipe.model, checkpoint)
            for config in [] if reused else self.recipe.evaluations:
                if evaluated_model_type(config.kind) != model_type:
                    continue
                rows = evaluation_rows(config, self.loaded.directory, self.recipe.seed)
                for metric, value in evaluator(config.kind)(model, tokenizer, rows, config).items():
                    metrics[f"{config.name}.{metric}"] = value
            if not reused:
                _write_json(folder / "eval.json", {"key": key, "metrics": metrics, "seconds": time.time() - started})
            if sample:
                samples.write(folder, model_hash, model, tokenizer)
            del model
        self.log(f"[{name}] eval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not k.endswith(".n")))
        return metrics

    def _check_gates(self, name: str, ancestor: str | None, metrics: dict[str, float]) -> None:
        """Checks the gates on stage ``name``; a `max_drop` is measured from `relative_to`, else from
        ``ancestor``, the nearest evaluated stage up its lineage."""
        for gate in self.recipe.gates:
            if gate.stages is not None and name not in gate.stages:
                continue
            baseline = gate.relative_to or ancestor
            previous = next((row for row in self.table if row["stage"] == baseline), None)
            value = metrics.get(gate.metric)
            if value is None:
                raise GateFailed(f"gate on {gate.metric!r}: stage {name!r} produced no such metric ({sorted(metrics)})")
            if gate.min is not None and value < gate.min:
                raise GateFailed(f"gate failed after stage {name!r}: {gate.metric} = {value:.4g} < min {gate.min}")
            if gate.max_drop is not None and previous is not None and gate.metric in previous:
                drop = previous[gate.metric] - value
                if drop > gate.max_drop:
                    raise GateFailed(
                        f"gate failed after stage {name!r}: {gate.metric} fell from {previous[gate.metric]:.4g} "
                        f"({baseline}) to {value:.4g}, a drop of {drop:.4g} > max_drop {gate.max_drop}; "
                        f"the checkpoint is kept at {self.stage_dir(name) / 'checkpoint'}"
                    )


def _input_hash(checkpoint: Path | None) -> str | None:
    if checkpoint is None:
        return None
    manifest = _read_json(checkpoint.parent / "manifest.json")
    return manifest.get("checkpoint_hash") if manifest else None


def fingerprint_config(stage: StageConfig) -> dict[str, Any]:
    """The stage config as it counts for reuse and resume: without the settings of how often the training
    state is saved, which change no result."""
    config = _dump(stage)
    train = config.get("train")
    if isinstance(train, dict):
        config["train"] = {k: v for k, v in train.items() if k not in ("save_every", "keep_last")}
    return config


def _truncate_metrics(path: Path, step: int) -> None:
    """Keeps the rows of ``metrics.jsonl`` up to ``step``: the later ones are trained again on resume."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a row cut off by the kill
        if row.get("step", 0) <= step:
            kept.append(line + "\n")
    temp = path.with_name(path.name + f".tmp-{os.getpid()}")
    temp.write_text("".join(kept))
    temp.replace(path)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _check_writable(folder: Path) -> None:
    """Creates ``folder`` and writes a probe file in it: a clear error before anything trains, not at the
    first save."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output folder {folder} is not writable: {err}") from None


def table_columns(table: list[dict[str, Any]]) -> list[str]:
    """Metric columns of the evaluation table in first-seen order, without example counts (``.n``)."""
    return [c for c in dict.fromkeys(k for row in table for k in row) if c != "stage" and not c.endswith(".n")]


def format_table(table: list[dict[str, Any]]) -> str:
    """The evaluation table as aligned plain text (metrics as columns, one row per stage)."""
    columns = table_columns(table)
    header = ["stage"] + columns
    body = [[row["stage"]] + [format_cell(row.get(c)) for c in columns] for row in table]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in body]
    return "\n".join(lines)


def format_cell(value: Any) -> str:
    """A table cell: 4 significant digits for floats, `-` for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
