"""The Ray cluster test's app: the cluster Room plus a voice agent on fake speech models
(loaded from the integration apps) that can say which process it runs in."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "integration" / "apps"))

from cluster_app import Room
from voice_fake import FakeVoice

from callroom import callable


class ClusterVoice(FakeVoice):
    """`/agents/cluster-voice/<name>`."""

    @callable
    def pid(self) -> int:
        return os.getpid()


agents = [Room, ClusterVoice]
