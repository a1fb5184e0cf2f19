"""A constitutional stage whose critic never produces a usable revision (an untrained model) ends with the
project's short error naming the stage and its trace file, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.cli import main

CONSTITUTION = Path(__file__).resolve().parents[2] / "recipes" / "constitutions" / "arithmetic.yaml"


def test_no_usable_revision_is_a_short_error(tmp_path: Path, write_recipe, capsys) -> None:
    recipe = write_recipe(tmp_path, f"""\
        name: norevision
        output_dir: {tmp_path / 'run'}
        model: {{name_or_path: "builtin:micro"}}
        stages:
          - name: critique
            kind: constitutional
            constitution: {CONSTITUTION}
            data: {{source: "builtin:arithmetic", count: 3, levels: [1]}}
            rounds: 1
            response: {{max_new_tokens: 3, temperature: 1.0}}
            revise: {{max_new_tokens: 3, temperature: 0.0}}
            evaluate: false
        """)
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: stage 'critique': no usable revision among 3 prompts") and "trace.jsonl" in err[-1]
    # the run report marks the stage failed, with its error text
    failed = json.loads((tmp_path / "run" / "stages" / "critique" / "failed.json").read_text())
    assert failed["error"].startswith("StageError: stage 'critique': no usable revision")
    page = (tmp_path / "run" / "report.html").read_text()
    assert '<h2>Failed</h2><table class="failed">' in page and "StageError: stage &#x27;critique&#x27;" in page
