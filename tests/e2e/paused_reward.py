"""A python reward that pauses before scoring, so a test can kill a step at a known point."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from eva_runtime.rewards import length_target


def length_after_pause(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    time.sleep(float(os.environ.get("EVA_TEST_REWARD_PAUSE", "0")))
    return length_target(prompts, responses)
