"""Dense masks: broadcasting (dM summed over broadcast dims) and linearity in v and M."""


def test_broadcast_mask_equals_expanded_mask(target, harness):
    harness("broadcast_mask", target)


def test_linear_in_v(target, harness):
    harness("linearity_v", target)


def test_linear_in_mask(target, harness):
    harness("linearity_mask", target)
