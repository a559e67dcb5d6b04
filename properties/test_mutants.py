"""The harness must reject every deliberately broken backend under the ci profile.

linattn/testing/mutants.py lists them (off-by-one at a tile edge, a dropped partial
tile, dM or GQA gradients not summed, the decay exponent off by one, TF32 in float32, a
future token leaking, the final state not carried, the mask gradient's sign...). Each
runs through check_backend with the ci profile's settings, whatever LINATTN_PROFILE says,
and must fail at least one property. The defect-free tiled backend they are built on
must pass, or the rejections would prove nothing.
"""
import pytest

from linattn.testing import check_backend
from linattn.testing.mutants import MUTANTS, mutant

# the dropped-tile mutant leaves rows NaN (poisoned memory); the API warns about them
pytestmark = pytest.mark.filterwarnings("ignore:float16 overflow")


@pytest.mark.parametrize("defect", list(MUTANTS))
def test_ci_profile_rejects_mutant(defect):
    report = check_backend(MUTANTS[defect], profile="ci", fail_fast=True, keep_measurements=False)
    caught = [p for p in report.properties if p.status == "fail"]
    assert caught, f"mutant {defect!r} survived the ci profile:\n{report.to_markdown()}"


def test_defect_free_tiled_backend_passes():
    report = check_backend(mutant(None), profile="dev", max_examples=8, keep_measurements=False)
    assert report.ok, report.to_markdown()
    assert sum(p.status == "pass" for p in report.properties) >= 10
