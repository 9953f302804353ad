"""`spectrum train` run by tests/test_interrupt.py in a subprocess, slowed where the test sends its signal.

SPECTRUM_TEST_SLOW=save sleeps inside each checkpoint save from step SPECTRUM_TEST_AT on, after the model is written
and before the optimizer and trainer_state.json; =step sleeps inside each training step from that step on. The
worker touches SPECTRUM_TEST_MARK as it starts sleeping, so the test knows the signal lands mid-save or mid-step.
"""

import os
import sys
import time
from pathlib import Path

import transformers

from spectrum_llm.cli import main

MODE = os.environ.get("SPECTRUM_TEST_SLOW", "")
AT = int(os.environ.get("SPECTRUM_TEST_AT", "0"))
MARK = Path(os.environ.get("SPECTRUM_TEST_MARK", os.devnull))


def _slowed(name: str) -> None:
    original = getattr(transformers.Trainer, name)

    def slow(self, *args, **kwargs):
        if self.state.global_step >= AT:
            MARK.touch()
            time.sleep(4)
        return original(self, *args, **kwargs)

    setattr(transformers.Trainer, name, slow)


if MODE:
    _slowed({"save": "_save_optimizer_and_scheduler", "step": "training_step"}[MODE])
main(sys.argv[1:])
