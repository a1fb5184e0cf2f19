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

A stage's fingerprint (`posttrain.fingerprints`) hashes its config, the fingerprint of the checkpoint it starts
from, its data and the seed. A stage whose manifest records the same fingerprint (and whose checkpoint is
complete) is reused; otherwise it and everything downstream of it re-run. The manifest is written last,
after the checkpoint is in place, so a crash mid-stage leaves nothing that a later run would take as
finished. A stage that saves its training state can be continued with ``--resume``
(`posttrain.stage_resume`); the evaluation table's text form is `posttrain.report.table`.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.config.stages import StageConfig
from posttrain.data.stage_outputs import bind_stage_outputs
from posttrain.errors import GateFailed
from posttrain.files import json_hash, read_json, write_json_atomic, write_text_atomic
from posttrain.report.collect import FAILED
from posttrain.fingerprints import (
    MANIFEST, base_model_fingerprint, config_dump, fingerprint_config, input_hash, is_complete,
    stage_data_fingerprints, stage_fingerprints,
)
from posttrain.recipe import LoadedRecipe
from posttrain.stage_resume import stage_train_checkpoints
from posttrain.run_paths import check_run_folder, stage_folder


@dataclass
class StageRecord:
    """A stage of this run: its fingerprint and checkpoint, whether it was reused, its evaluation metrics."""

    name: str
    fingerprint: str
    checkpoint: Path
    reused: bool
    metrics: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0  # training time in this run (0 when reused)
    eval_seconds: float = 0.0  # evaluation time in this run


def library_versions() -> dict[str, str]:
    """The versions of Python and the libraries that decide a result, for the manifest."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("posttrain", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


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
        return stage_fingerprints(self.loaded)

    def is_complete(self, name: str, fingerprint: str, input_checkpoint: Path | None) -> bool:
        """Whether stage ``name`` finished with this fingerprint from this input (`fingerprints.is_complete`)."""
        return is_complete(self.stage_dir(name), fingerprint, input_checkpoint)

    def run(self) -> list[dict[str, Any]]:
        """Runs (or reuses) every stage and its evaluations; returns the evaluation table."""
        if self.is_main:
            check_run_folder(self.run_dir)  # before anything is written: see posttrain/run_paths.py
            _check_writable(self.run_dir)
            write_text_atomic(self.run_dir / "recipe.yaml", yaml.safe_dump(self.loaded.raw, sort_keys=False))
        self.accelerator.wait_for_everyone()
        fingerprints = self.fingerprints()
        if self.recipe.evaluate_base and self.recipe.evaluations:
            self._evaluate("base", None, json_hash(["base", base_model_fingerprint(self.loaded)]))
        for index, (stage, fingerprint) in enumerate(zip(self.recipe.stages, fingerprints)):
            parent = self.recipe.parent_of(index)
            try:
                record = self._run_stage(index, fingerprint, self.records[parent].checkpoint if parent else None)
                self.records[stage.name] = record
                if stage.evaluate and self.recipe.evaluations:
                    manifest = read_json(self.stage_dir(stage.name) / MANIFEST)
                    evaluating = time.time()
                    record.metrics = self._evaluate(stage.name, record.checkpoint, manifest["checkpoint_hash"])
                    record.eval_seconds = time.time() - evaluating
                    self._check_gates(stage.name, self.recipe.evaluated_ancestor(index), record.metrics)
            except Exception as err:
                self._mark_failed(stage.name, err)
                raise
            if self.is_main:
                (self.stage_dir(stage.name) / FAILED).unlink(missing_ok=True)
        return self.table

    def _mark_failed(self, name: str, err: Exception) -> None:
        """Records why stage ``name`` (or its evaluation or gate) failed, for the run report."""
        if not self.is_main:
            return
        try:
            self.stage_dir(name).mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.stage_dir(name) / FAILED, {"error": f"{type(err).__name__}: {err}"[:4000]})
        except OSError as record_err:  # an unwritable stage folder: the original error is the one to raise
            self.say(f"[{name}] could not record the failure in {self.stage_dir(name)}: {record_err}")

    def _run_stage(self, index: int, fingerprint: str, input_checkpoint: Path | None) -> StageRecord:
        stage = self.recipe.stages[index]
        folder = self.stage_dir(stage.name)
        checkpoint = folder / "checkpoint"
        if self.is_complete(stage.name, fingerprint, input_checkpoint):
            self.say(f"[{stage.name}] reused (config, inputs and data unchanged): {checkpoint}")
            manifest = read_json(folder / MANIFEST)
            return StageRecord(stage.name, fingerprint, checkpoint, True, summary=manifest.get("summary", {}))
        from posttrain.stages import StageContext, stage_class

        accelerator = self.accelerator
        checkpoints = self._prepare_folder(index, fingerprint, input_checkpoint)
        origin = f"from {self.recipe.parent_of(index) or 'base model'}" if stage.makes_checkpoint else "writes data only"
        self.say(f"[{stage.name}] running {stage.kind} ({origin})")
        config, decontamination = self._decontaminate(stage, folder)
        context = StageContext(
            config=config,
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
            if decontamination is not None:
                summary = {**(summary or {}), "decontamination": decontamination}
        finally:
            context.metrics.close()
        checkpoint_hash = runner.save(checkpoint)  # every process: ZeRO-3 gathers its shards; the main one writes
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            manifest = self._manifest(stage, fingerprint, input_checkpoint, checkpoint_hash, summary, started)
            write_json_atomic(folder / MANIFEST, manifest)
        accelerator.wait_for_everyone()  # the manifest is in place before any process reads it
        if accelerator.is_main_process:  # the stage's checkpoint is in place: its training states are spent
            shutil.rmtree(folder / "resume", ignore_errors=True)
        seconds = time.time() - started
        self.say(f"[{stage.name}] finished in {seconds:.1f}s -> {checkpoint}")
        del runner
        return StageRecord(stage.name, fingerprint, checkpoint, False, summary=summary, seconds=seconds)

    def stage_times(self) -> str:
        """One line: each stage's training and evaluation seconds in this run (reused stages say so)."""
        parts = [
            f"{r.name} reused" if r.reused else f"{r.name} {r.seconds:.0f}s" + (f" + eval {r.eval_seconds:.0f}s" if r.eval_seconds else "")
            for r in self.records.values()
        ]
        return "Time per stage: " + ", ".join(parts)

    def _decontaminate(self, stage: StageConfig, folder: Path) -> tuple[StageConfig, dict[str, Any] | None]:
        """The stage's config with `stage:` sources bound and, for a training stage, rows containing evaluation
        rows removed from its data (`posttrain.curation.training`; the main process does it, the others take
        its result); and the decontamination summary for the manifest (None when nothing was checked)."""
        bound = bind_stage_outputs(stage, self.run_dir / "stages")
        if not stage.makes_checkpoint:
            return bound, None
        from posttrain.curation.training import decontaminate_training_data, describe

        result = None
        if self.is_main:
            curate_stages = {s.name for s in self.recipe.stages if s.kind == "curate"}
            result = decontaminate_training_data(stage, bound, self.loaded.directory, self.recipe.seed, folder, curate_stages)
            if result[1] is not None:
                self.say(f"[{stage.name}] {describe(result[1])}")
        if self.accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            result = broadcast_object_list([result], from_process=0)[0]
        return result

    def _prepare_folder(self, index: int, fingerprint: str, input_checkpoint: Path | None):
        """Checks the stage folder is writable, picks the training state to continue from (if any) and
        removes what the run is about to write anew; returns the stage's `TrainCheckpoints`."""
        folder = self.stage_dir(self.recipe.stages[index].name)
        if self.is_main:
            _check_writable(folder)
        self.accelerator.wait_for_everyone()
        checkpoints = self._train_checkpoints(index, fingerprint, input_checkpoint)
        if self.is_main:
            stale = [MANIFEST, "eval.json"] + ([] if checkpoints.resume_from else ["metrics.jsonl"])
            for name in stale:
                (folder / name).unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        return checkpoints

    def _manifest(
        self, stage: StageConfig, fingerprint: str, input_checkpoint: Path | None, checkpoint_hash: str,
        summary: dict[str, Any], started: float,
    ) -> dict[str, Any]:
        """What ``manifest.json`` records of a finished stage; written last, so it marks the stage complete."""
        return {
            "stage": stage.name,
            "kind": stage.kind,
            "fingerprint": fingerprint,
            "config_hash": json_hash(config_dump(stage)),
            "config": config_dump(stage),
            "input": str(input_checkpoint) if input_checkpoint else self.recipe.model.name_or_path,
            "input_hash": input_hash(input_checkpoint),
            "data": stage_data_fingerprints(stage, self.loaded.directory, self.recipe.seed),
            "checkpoint_hash": checkpoint_hash,
            "versions": library_versions(),
            "summary": summary,
            "started": started,
            "finished": time.time(),
            "complete": True,
        }

    def _train_checkpoints(self, index: int, fingerprint: str, input_checkpoint: Path | None):
        """The stage's resumable training state and the saved one to continue from (`posttrain.stage_resume`)."""
        stage = self.recipe.stages[index]
        parent = self.recipe.parent_of(index)
        identity = {
            "fingerprint": fingerprint,
            "config": fingerprint_config(stage),
            "data": stage_data_fingerprints(stage, self.loaded.directory, self.recipe.seed),
            "parent": self.records[parent].fingerprint if parent else base_model_fingerprint(self.loaded),
            "input_hash": input_hash(input_checkpoint),
            "seed": self.recipe.seed,
            "world_size": self.accelerator.num_processes,
        }
        return stage_train_checkpoints(
            stage, self.stage_dir(stage.name), identity, self.accelerator,
            resume=self.resume, restart_changed=self.restart_changed, say=self.say,
        )

    def _metrics_writer(self, stage: StageConfig, folder: Path, is_main: bool, resume_from: Path | None):
        """The stage's metrics writer: metrics.jsonl, the recipe's trackers, and the progress display."""
        from posttrain.training.metrics import MetricsWriter
        from posttrain.training.state import read_state
        from posttrain.training.trackers import open_trackers

        settings = self.recipe.logging
        resume_step = read_state(resume_from)["step"] if resume_from is not None else None
        trackers = (
            open_trackers(settings, self.run_dir, self.recipe.name, stage.name, config_dump(stage), resume_step)
            if is_main else []
        )
        return MetricsWriter(folder / "metrics.jsonl", stage.name, is_main, progress=settings.progress, trackers=trackers)

    def _evaluate(self, name: str, checkpoint: Path | None, model_hash: str) -> dict[str, float]:
        """Evaluates one checkpoint (`_evaluate_checkpoint`) and adds its row to the evaluation table.

        With several processes the main one evaluates and writes; the others receive its metrics, so every
        process applies the gates to the same table and stops (or goes on) together.
        """
        waiting = self._evaluation_wait() if self.accelerator.num_processes > 1 else None
        metrics = self._evaluate_checkpoint(name, checkpoint, model_hash) if self.is_main else None
        if waiting is not None:
            metrics = waiting.share(metrics)  # within the evaluations' `timeout_minutes` (posttrain.eval.waiting)
        self.table.append({"stage": name, **metrics})
        if self.is_main:
            write_json_atomic(self.run_dir / "evaluations.json", self.table)
        return metrics

    def _evaluation_wait(self):
        """The group the other processes wait for the main one's evaluations in (made once, on every process)."""
        if getattr(self, "_waiting", None) is None:
            from posttrain.eval.waiting import MainProcessResult, evaluation_timeout

            self._waiting = MainProcessResult(evaluation_timeout(self.recipe.evaluations))
        return self._waiting

    def _evaluate_checkpoint(self, name: str, checkpoint: Path | None, model_hash: str) -> dict[str, float]:
        """Runs every evaluation on one checkpoint, reusing results stored for the same model and config.

        A reward-model checkpoint is loaded as a sequence classifier and gets only the evaluations that
        score reward models (`pairwise_accuracy`); a language model gets all the others, and writes the
        run report's sample generations (`posttrain.report.samples`).
        """
        from posttrain.eval.cache_key import evaluation_key
        from posttrain.eval.evaluators import evaluator
        from posttrain.eval.preference import evaluated_model_type, evaluation_rows
        from posttrain.models.checkpoint import load_model_and_tokenizer
        from posttrain.models.reward_head import is_reward_model_checkpoint, load_reward_model
        from posttrain.report.samples import SamplePlan

        folder = self.stage_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        key = evaluation_key(model_hash, self.recipe.evaluations, self.recipe.seed)  # lm-eval: versions, task files
        stored = read_json(folder / "eval.json")
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
            provenance = {}  # what an evaluator reports of how it computed (`kind: lm_eval`: versions, task hashes)
            for config in [] if reused else self.recipe.evaluations:
                if evaluated_model_type(config.kind) != model_type:
                    continue
                rows = evaluation_rows(config, self.loaded.directory, self.recipe.seed)
                result = evaluator(config.kind)(model, tokenizer, rows, config)
                for metric, value in result.items():
                    metrics[f"{config.name}.{metric}"] = value
                if getattr(result, "provenance", None):
                    provenance[config.name] = result.provenance
            if not reused:
                record = {"key": key, "metrics": metrics, "seconds": time.time() - started}
                write_json_atomic(folder / "eval.json", {**record, **({"provenance": provenance} if provenance else {})})
                if provenance and (folder / MANIFEST).is_file():  # the stage's manifest records it too
                    write_json_atomic(folder / MANIFEST, {**read_json(folder / MANIFEST),
                                                          "evaluation": {"key": key, "provenance": provenance}})
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
