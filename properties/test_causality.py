"""Changing the future never changes the past (o and dq up to position t)."""


def test_future_does_not_change_past(target, harness):
    harness("causality", target)
