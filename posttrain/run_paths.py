"""Paths of a run that stay inside its run folder: plain names, a checked output folder, no followed links.

A stage named `../../../../escaped_stage` once wrote its checkpoint outside the run folder, a symlinked
`stages/<name>` folder was followed and the target's `checkpoint/` replaced, and `output_dir: /` passed
`validate`. Here:

- Run and stage names are plain names (`check_plain_name`): letters, digits, `_`, `-` and `.`, not starting
  with `.` or `-`, at most 100 characters — each names exactly one folder, never a path.
- The output folder is checked before anything runs (`check_output_dir`, called by the recipe schema, so
  `posttrain validate` and `--dry-run` report it): not `/`, a system folder, the home folder, the working
  directory or a folder above it. At run time (`check_run_folder`) an existing non-empty folder must
  already be a posttrain run (it has `recipe.yaml` or `stages/`): a run only ever writes and deletes below it.
- Stage folders are reached through `stage_folder`, which refuses a symbolic link at `stages/`,
  `stages/<name>/` or `stages/<name>/checkpoint/` instead of following it.

Torch-free and filesystem-read-only except where stated, so `posttrain validate` stays fast.

>>> check_plain_name("sft_v2", "stage name")
'sft_v2'
>>> check_plain_name("../escaped", "stage name")
Traceback (most recent call last):
...
ValueError: stage name '../escaped' must be a plain name (letters, digits, '_', '-', '.'; not starting with '.' or '-'; at most 100 characters): it names a folder of the run
"""

from __future__ import annotations

import re
from pathlib import Path

from posttrain.errors import RecipeError

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_SYSTEM_FOLDERS = frozenset(
    "/ /bin /boot /dev /etc /home /lib /lib32 /lib64 /media /mnt /opt /proc /root /run /sbin /srv /sys /tmp /usr /var".split()
)


def check_plain_name(value: str, what: str) -> str:
    """`value` if it is a plain folder name, else ValueError naming `what` (for pydantic validators)."""
    if not isinstance(value, str) or not _PLAIN_NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be a plain name (letters, digits, '_', '-', '.'; not starting with '.' or '-'; "
            "at most 100 characters): it names a folder of the run"
        )
    return value


def check_output_dir(value: str | None, cwd: Path | None = None) -> str | None:
    """`value` if it is a safe run folder (see the module docstring), else ValueError saying why."""
    if value is None:
        return None
    if not value.strip():
        raise ValueError("output_dir is empty; leave it out for the default runs/NAME")
    cwd = (cwd or Path.cwd()).resolve()
    folder = (cwd / Path(value).expanduser()).resolve()
    reason = ""
    if str(folder) in _SYSTEM_FOLDERS:
        reason = "a system folder"
    elif folder == Path.home().resolve():
        reason = "the home folder"
    elif cwd == folder or folder in cwd.parents:
        reason = "the working directory or a folder above it"
    if reason:
        raise ValueError(
            f"output_dir {value!r} (resolves to {folder}) is {reason}: a run writes and deletes below its output "
            "folder, so give it a folder of its own, e.g. runs/NAME"
        )
    return value


def check_run_folder(run_dir: Path) -> None:
    """Before a run writes anything: an existing, non-empty `run_dir` must be a posttrain run folder.

    Raises:
        RecipeError: Naming the folder and what is wrong with it.
    """
    check_output_dir(str(run_dir))
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not ((run_dir / "recipe.yaml").is_file() or (run_dir / "stages").is_dir()):
            raise RecipeError(
                f"output folder {run_dir} exists, is not empty and is not a posttrain run (no recipe.yaml or "
                "stages/): choose an empty or new folder (output_dir) so that nothing else in it is replaced"
            )
    stages = run_dir / "stages"
    if stages.is_symlink():
        raise RecipeError(f"{stages} is a symbolic link; posttrain does not follow links in a run folder: remove it")


def stage_folder(run_dir: Path, name: str) -> Path:
    """`run_dir/stages/<name>`, refusing a symbolic link on the way (it would write or delete elsewhere).

    Raises:
        RecipeError: If the name is not plain, or `stages/`, the stage folder or its `checkpoint/` is a link.
    """
    try:
        check_plain_name(name, "stage name")
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    folder = run_dir / "stages" / name
    for path in (run_dir / "stages", folder, folder / "checkpoint"):
        if path.is_symlink():
            raise RecipeError(
                f"{path} is a symbolic link; posttrain does not follow links in a run folder (it would replace "
                "what the link points to): remove the link"
            )
    return folder
