"""float64 finite differences agree with every backward (gradgradcheck where declared)."""


def test_gradcheck_float64(target, harness):
    harness("gradcheck", target)
