"""The run report: written at the end of `posttrain run` and by `posttrain report`; self-contained HTML with
the evaluation table, embedded PNG plots and samples side by side, no online links; Markdown with the same
content; plots chosen by metric names (so RL stages' reward/KL keys get plotted); and, where Chromium is
installed, the page rendered headless with the table and a plot checked in the screenshot."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from posttrain.cli import main
from posttrain.report import write_report
from posttrain.report.collect import RunRecord, StageRecord, collect
from posttrain.report.plots import TRAINING_PLOTS, all_plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGES = ["base", "pretrain", "sft"]


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_run_writes_the_report_automatically(cli_micro_run) -> None:
    run_dir = cli_micro_run.run_dir
    assert f"Report: {run_dir / 'report.html'}" in cli_micro_run.done.stdout
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()


def test_html_is_self_contained_with_table_plots_and_samples(cli_micro_run) -> None:
    run_dir = cli_micro_run.run_dir
    page = (run_dir / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    # everything the page loads is inline: no src/href other than data: URIs
    assert all(value.startswith("data:image/png;base64,") for value in re.findall(r'(?:src|href)="([^"]*)"', page))
    table = re.search(r'<table class="evaluation">(.*?)</table>', page, re.S).group(1)
    assert "<th>arith.accuracy</th>" in table
    evaluations = json.loads((run_dir / "evaluations.json").read_text())
    for row in evaluations:
        assert f"<td>{row['stage']}</td><td class=\"num\">{row['arith.accuracy']:.4g}</td>" in table
    pngs = embedded_pngs(page)
    assert len(pngs) >= 3 and all(png.startswith(PNG_MAGIC) and len(png) > 5000 for png in pngs)
    assert 'id="plot-loss"' in page and 'id="plot-accuracy"' in page and 'id="plot-timings"' in page
    samples = re.search(r'<table class="samples">(.*?)</table>', page, re.S).group(1)
    assert "<th>prompt</th><th>reference</th>" + "".join(f"<th>{s}</th>" for s in STAGES) in samples
    stored = json.loads((run_dir / "stages" / "sft" / "samples.json").read_text())["samples"]
    assert samples.count("<tr>") == 1 + len(stored) == 5
    for sample in stored:
        assert f"<td><pre>{sample['prompt']}</pre></td>" in samples


def test_every_evaluated_stage_samples_the_same_prompts(cli_micro_run) -> None:
    stored = {
        name: json.loads((cli_micro_run.run_dir / "stages" / name / "samples.json").read_text())["samples"]
        for name in STAGES
    }
    prompts = [[s["prompt"] for s in samples] for samples in stored.values()]
    assert len(prompts[0]) == 4 and all(p == prompts[0] for p in prompts)
    assert all(s["answer"].isdigit() for s in stored["sft"])


def test_markdown_has_the_table_plot_files_and_recipe(cli_micro_run) -> None:
    run_dir = cli_micro_run.run_dir
    text = (run_dir / "report.md").read_text()
    assert "| stage | arith.accuracy |" in text
    assert all(re.search(rf"^\| {stage} \| [0-9.]+ \|$", text, re.M) for stage in STAGES)
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images and all((run_dir / image).read_bytes().startswith(PNG_MAGIC) for image in images)
    assert "```yaml\nname: micro\n" in text and "http" not in text


def test_report_command_rewrites_the_report(cli_micro_run, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(cli_micro_run.run_dir, run_dir)
    for name in ("report.html", "report.md"):
        (run_dir / name).unlink()
    assert main(["report", str(run_dir)]) == 0
    assert f"wrote {run_dir / 'report.html'} and {run_dir / 'report.md'}" in capsys.readouterr().out
    assert embedded_pngs((run_dir / "report.html").read_text())


def test_report_of_a_folder_that_is_no_run_is_a_short_error(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: not a run directory (no recipe.yaml); runs are written to runs/NAME"


RL_KEYS = {  # as the GRPO/PPO stages log them
    "loss": 0.5, "policy_loss": 0.4, "reward/total/mean": 0.6, "reward/total/std": 0.2, "reward/math/mean": 0.7,
    "reward/math/error_rate": 0.0, "reward/math/seconds": 0.1, "reward/math/weight": 1.0, "reward/format/mean": 0.4,
    "reward/excluded_rate": 0.0, "kl": 0.02, "kl_coef": 0.05, "response_length": 12.0, "heldout/accuracy": 0.5,
    "heldout/hacking_warning": 0.0, "tokens_per_s": 900.0, "grad_norm": 1.0,
}


def rl_like_run() -> RunRecord:
    """A run record as an RL stage leaves it after an SFT stage."""
    rows = [{"step": s, **{k: v * s for k, v in RL_KEYS.items()}} for s in range(1, 6)]
    sft = StageRecord("sft", "sft", metrics=[{"step": 1, "loss": 2.0}, {"step": 2, "loss": "nan"}])
    grpo = StageRecord("grpo", "grpo", metrics=rows)
    table = [{"stage": "sft", "math.accuracy": 0.4, "math.n": 8.0}, {"stage": "grpo", "math.accuracy": 0.6}]
    return RunRecord(Path("runs/x"), "x", "name: x\n", table, [sft, grpo])


def test_training_plots_pick_the_keys_rl_stages_log() -> None:
    picked = {name: [key for key in RL_KEYS if keep(key)] for name, _, keep in TRAINING_PLOTS}
    assert picked == {
        "loss": ["loss", "policy_loss"],
        "reward": ["reward/total/mean", "reward/math/mean", "reward/format/mean"],
        "kl": ["kl"],
        "response_length": ["response_length"],
        "heldout": ["heldout/accuracy"],
        "episodes": [],
    }
    episode_keys = ["episodes/turns", "episodes/tool_calls", "episodes/length", "episodes/failed", "episodes/environment_seconds"]
    keep = dict((name, keep) for name, _, keep in TRAINING_PLOTS)["episodes"]
    assert [key for key in episode_keys if keep(key)] == ["episodes/turns", "episodes/tool_calls", "episodes/failed"]


def test_plots_have_a_panel_per_stage_with_data() -> None:
    plots = {plot.name: plot for plot in all_plots(rl_like_run())}
    assert list(plots) == ["loss", "reward", "kl", "response_length", "heldout", "accuracy"]
    assert all(plot.png.startswith(PNG_MAGIC) for plot in plots.values())
    # loss was logged by both stages (two panels side by side), reward by one: same height, twice the width
    loss, reward = (imread(io.BytesIO(plots[name].png)).shape for name in ("loss", "reward"))
    assert loss[1] > 1.8 * reward[1] and loss[0] == reward[0]


def test_report_of_a_run_without_evaluations_or_samples(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("name: bare\nstages:\n  - {name: pretrain, kind: pretrain}\n")
    folder = tmp_path / "stages" / "pretrain"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text('{"stage": "pretrain", "step": 1, "loss": 3.0}\n{"step": 2, "lo')
    html_path, md_path = write_report(tmp_path)
    page = html_path.read_text()
    assert "No evaluations recorded." in page and 'id="plot-loss"' in page and "Samples" not in page
    assert collect(tmp_path).stages[0].metrics == [{"stage": "pretrain", "step": 1, "loss": 3.0}]


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
HEADER_GREY = (228, 228, 228)  # th background in the report's style
BORDER_GREY = (200, 200, 200)  # table borders
PLOT_BLUE = (31, 119, 180)  # matplotlib's first line colour; the page's own style has no blue


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(cli_micro_run, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,2400", f"--screenshot={shot}", (cli_micro_run.run_dir / "report.html").as_uri()],
        capture_output=True, timeout=120, check=True,
    )
    pixels = np.round(imread(shot)[..., :3] * 255).astype(int)
    # the evaluation table: the first band of header-grey rows is its header row
    header = np.all(pixels == HEADER_GREY, axis=-1)
    header_rows = np.nonzero(header.sum(axis=1) >= 40)[0]
    assert header_rows.size, "no table header on the page"
    top = bottom = header_rows[0]
    while bottom + 1 in header_rows:
        bottom += 1
    columns = np.nonzero(header[top : bottom + 1].any(axis=0))[0]
    left, right = columns.min(), columns.max()
    assert right - left > 100
    stages = len(json.loads((cli_micro_run.run_dir / "evaluations.json").read_text()))
    row_height = bottom - top + 1
    body = pixels[bottom + 1 : bottom + 1 + (stages + 1) * (row_height + 2), left : right + 1]
    rules = np.nonzero(np.all(body == BORDER_GREY, axis=-1).mean(axis=1) > 0.9)[0]
    assert len(rules) == stages + 1, f"expected {stages} table rows, found rules at {rules}"
    text = body[: rules[-1]].sum(axis=-1) < 300
    assert text.sum() > 50 * stages, "the table rows hold no text"
    # a plot: the embedded PNGs decoded and drawn (their line colour), below the table
    blue = np.all(np.abs(pixels - PLOT_BLUE) <= 12, axis=-1)
    assert blue.sum() > 2000, "no plot drawn"
    assert np.nonzero(blue)[0].min() > bottom + rules[-1]


def test_report_shows_whole_episodes(tmp_path: Path) -> None:
    from posttrain.rl.episodes import Episode, write_episode_samples
    from posttrain.rl.prompts import PromptRow

    (tmp_path / "recipe.yaml").write_text("name: tools\nstages:\n  - {name: grpo, kind: grpo}\n")
    folder = tmp_path / "stages" / "grpo"
    folder.mkdir(parents=True)
    row = PromptRow([{"role": "user", "content": "What is 71 - 28?"}], "What is 71 - 28?", {"answer": "43"})

    def episode(answer: str, reward: float) -> Episode:
        messages = [*row.messages, {"role": "assistant", "content": "<<calculator: 71 - 28>>"},
                    {"role": "tool", "content": "43"}, {"role": "assistant", "content": answer}]  # fmt: skip
        return Episode(row, messages=messages, reward=reward)

    write_episode_samples(folder, "before training", [episode("41", 0.0)])
    write_episode_samples(folder, "after step 20", [episode("42", 0.0)])
    write_episode_samples(folder, "after step 40", [episode("43", 1.0)])  # replaces step 20, keeps the first
    html_path, md_path = write_report(tmp_path)
    page, markdown = html_path.read_text(), md_path.read_text()
    assert "<h2>Episodes: grpo (held-out, greedy)</h2>" in page
    assert "<th>before training</th><th>after step 40</th>" in page and "after step 20" not in page
    assert "user: What is 71 - 28?\nassistant: &lt;&lt;calculator: 71 - 28&gt;&gt;\ntool: 43\nassistant: 43\n(reward 1)" in page
    assert "| before training | after step 40 |" in markdown
    assert "assistant: 41<br>(reward 0)" in markdown


def test_a_failed_stage_is_marked_with_its_error_and_long_tokens_wrap(tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text("name: broken\nstages:\n  - {name: sft, kind: sft}\n  - {name: dpo, kind: dpo}\n")
    for name in ("sft", "dpo"):
        (tmp_path / "stages" / name).mkdir(parents=True)
    (tmp_path / "stages" / "dpo" / "failed.json").write_text(json.dumps({"error": "DataError: pairs.jsonl:3: `chosen` is empty"}))
    html_path, md_path = write_report(tmp_path)
    page, markdown = html_path.read_text(), md_path.read_text()
    assert "<tr><td>dpo</td><td><pre>DataError: pairs.jsonl:3: `chosen` is empty</pre></td></tr>" in page
    assert "| dpo | DataError: pairs.jsonl:3: `chosen` is empty |" in markdown
    assert "<tr><td>dpo</td><td>dpo</td><td>failed</td>" in page and "<tr><td>sft</td><td>sft</td><td>-</td>" in page
    # a sample cell breaks a long unbroken token instead of overflowing into the next column
    assert re.search(r"table\.samples td \{[^}]*overflow-wrap: anywhere", page)
