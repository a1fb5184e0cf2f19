"""Several processes: the main process evaluates a checkpoint while the others wait for its metrics, within a
stated timeout.

Evaluations run on the main process only (`kind: lm_eval` hands lm-eval the loaded model, which its HF
backend evaluates in one process); the others wait for the main process's metrics, so every process applies
the gates to the same table and stops (or goes on) together. The wait is a broadcast over a gloo process
group of its own, made with a timeout of the sum of the recipe's evaluations' `timeout_minutes` (30 each by
default), not the launcher's process-group timeout (10 or 30 minutes, whatever the launcher chose): a long
lm-eval run is budgeted in the recipe, and a main process that hangs stops the others with a message saying
which setting to raise. Torch only when several processes run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any


def evaluation_timeout(evaluations: list[Any]) -> timedelta:
    """How long the other processes wait for the main process's evaluations of one checkpoint.

    >>> from types import SimpleNamespace as E
    >>> evaluation_timeout([E(timeout_minutes=30.0), E(timeout_minutes=90.0)])
    datetime.timedelta(seconds=7200)
    """
    return timedelta(minutes=sum(e.timeout_minutes for e in evaluations) or 30.0)


class MainProcessResult:
    """A gloo group with ``timeout`` over every process; `share` hands the main process's value to the others.

    Made on every process at the same point (making a group is itself collective), before the main process
    starts the work the others wait for.
    """

    def __init__(self, timeout: timedelta):
        import torch.distributed as dist

        self.timeout = timeout
        self.rank = dist.get_rank()
        self.group = dist.new_group(backend="gloo", timeout=timeout)

    def share(self, value: Any) -> Any:
        """The main process's ``value`` on every process; a waiting process past the timeout raises."""
        import torch.distributed as dist

        objects = [value]
        try:
            dist.broadcast_object_list(objects, src=0, group=self.group)
        except RuntimeError as error:
            if self.rank == 0:
                raise
            minutes = self.timeout.total_seconds() / 60
            raise RuntimeError(
                f"process {self.rank} waited {minutes:g} min for the main process's evaluation of a checkpoint and "
                "stopped (the wait is the sum of the evaluations' `timeout_minutes`: raise it for a long evaluation, "
                f"or lower its `limit`): {str(error).splitlines()[0]}"
            ) from None
        return objects[0]
