"""Fuzz campaigns for linattn: far longer and stranger than the property suites.

    python -m fuzz --minutes 10 --family torch|triton|cuda|all --seed S
    python -m fuzz --replay fuzz/failures/<id>.json        # re-run one recorded failure
    python -m fuzz --replay-all                             # re-run every recorded failure

``problems.py`` draws the strange problems (extreme magnitudes, wild masks, extreme slopes,
stride-0 and non-contiguous layouts) on top of :mod:`linattn.testing`'s strategies;
``campaign.py`` runs them against every backend of a family, steering with
``hypothesis.target`` toward the worst error/band fractions, and keeps the failure
database (``failures/*.json``, one per failure, and Hypothesis' ``hypothesis-db/``).
Results of the long campaigns are in docs/results-fuzz.md.

Importing this package does not import linattn: ``__main__`` sets TRITON_INTERPRET first
when the Triton family runs on a machine without a GPU.
"""
