"""Hypothesis profiles ``dev``, ``ci`` and ``thorough``, and the problem sizes each uses.

    dev       10 examples per property, random, with the example database — quick local runs
    ci        25 examples per property, derandomized (the same examples every run, so CI
              never flakes and a failure reproduces from the seed alone), no database
    thorough  500 examples per property, larger problems, database kept — long runs that
              `hypothesis.target` steers toward the worst errors

All use ``deadline=None`` (the first call of a kernel compiles) and print the
``@reproduce_failure`` blob. Select one with the environment variable LINATTN_PROFILE
(conftest.py) or ``linattn verify --profile``. Hypothesis loads its own ``ci`` profile
when it sees a CI variable; :func:`load` replaces it with ours explicitly.
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["PROFILES", "SIZES", "register_profiles", "load", "settings_for", "profile_from_env"]

PROFILES = {
    "dev": dict(max_examples=10),
    "ci": dict(max_examples=25, derandomize=True, database=None),
    "thorough": dict(max_examples=500),
}
#: Problem-size bounds per profile (keyword arguments of linattn.testing.problems), CPU.
SIZES = {
    "dev": dict(max_n=130, max_d=64),
    "ci": dict(max_n=130, max_d=64),
    "thorough": dict(max_n=520, max_d=128, max_work=1 << 25),
}
_COMMON = dict(
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.differing_executors],
)


def register_profiles() -> None:
    for name, kw in PROFILES.items():
        settings.register_profile(name, **_COMMON, **kw)


def profile_from_env(default: str = "dev") -> str:
    name = os.environ.get("LINATTN_PROFILE", default)
    if name not in PROFILES:
        raise ValueError(f"LINATTN_PROFILE must be one of {sorted(PROFILES)}, got {name!r}")
    return name


def load(name: str) -> None:
    """Register our profiles and load ``name`` (overriding Hypothesis' own ``ci``)."""
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    register_profiles()
    settings.load_profile(name)


def settings_for(name: str, max_examples=None, **overrides) -> settings:
    """A ``settings`` object for profile ``name`` (optionally with more/fewer examples)."""
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {name!r}")
    kw = dict(_COMMON, **PROFILES[name])
    if max_examples is not None:
        kw["max_examples"] = int(max_examples)
    kw.update(overrides)
    return settings(**kw)
