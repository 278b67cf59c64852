"""runfiles.py: the names of a run's files, every one derived from its --save path, so that
one object names them all. For --save checkpoints/awd.pt:

    checkpoints/awd.pt          the best model so far (kind "model", checkpoint.py)
    checkpoints/awd.state.pt    the latest training state (kind "state"), for --resume
    checkpoints/awd.csv         one metrics row per epoch (runlog.py)
    checkpoints/awd.json        the run's final numbers
    checkpoints/awd.lock        held while a run writes here (runlog.SaveLock)
"""

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class RunFiles:
    model: str  # the --save path

    @property
    def stem(self):
        return os.path.splitext(self.model)[0]

    @property
    def state(self):
        return self.stem + ".state.pt"

    @property
    def metrics(self):
        return self.stem + ".csv"

    @property
    def summary(self):
        return self.stem + ".json"

    @property
    def lock(self):
        return self.stem + ".lock"

    @staticmethod
    def on_disk(*paths):
        """Those of `paths` (None for none) that exist."""
        return [path for path in paths if path and os.path.exists(path)]

    def probe(self, pid):
        """A budget's probe of the disk's speed (progress.write_seconds), by process `pid`."""
        return f"{self.model}.budget-probe{pid}"
