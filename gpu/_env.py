"""Shared by the GPU scripts: set environment variables for a block, restoring them after."""
import os


class env:
    """``with env(NAME="value", ...):`` sets the variables and restores (or removes) them after."""

    def __init__(self, **kv):
        self.kv, self.old = kv, {}

    def __enter__(self):
        for k, v in self.kv.items():
            self.old[k] = os.environ.get(k)
            os.environ[k] = v

    def __exit__(self, *a):
        for k, v in self.old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
