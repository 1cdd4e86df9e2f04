"""Crashes at exact points of training, for tests (`CKPTLAB_FAULT`, parsed by `ckptlab.faults`).

`kill:step=S,micro=M` sends SIGKILL before micro-batch M (default 0) of 0-based step S, once any
checkpoint still completing in the background is complete (so the point is exact);
`nan:step=S` makes step S's loss NaN, which stops the run as a real divergence would.
"""

from __future__ import annotations

import os
import signal

from ckptlab.faults import Fault
from ckptlab.train.callbacks.base import Callback
from ckptlab.train.checkpointing import wait_for_every_finalize


class FaultInjectionCallback(Callback):
    """Injects one `CKPTLAB_FAULT` fault into the training loop."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault

    def on_micro_batch(self, step: int, micro: int) -> None:
        """`kill`: die like a preempted machine, with no chance to clean up."""
        at = self.fault.at
        if self.fault.kind == "kill" and at.get("step") == step and at.get("micro", 0) == micro:
            wait_for_every_finalize()
            os.kill(os.getpid(), signal.SIGKILL)

    def on_loss(self, step: int, loss: float) -> float:
        """`nan`: a NaN loss at the chosen step."""
        return float("nan") if self.fault.kind == "nan" and self.fault.at.get("step") == step else loss
