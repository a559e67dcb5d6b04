"""Every backend agrees with the float64 reference: o, the final state, every gradient.

Each test draws whole problems (linattn.testing.problems, narrowed to what the backend
declares) and compares each quantity inside its band (linattn.testing.bands). Run one
backend: ``pytest properties --backend chunked``; an external one:
``pytest properties --external docs.example_backend:attention``.
"""


def test_forward_agrees_with_float64(target, harness):
    harness("forward", target)


def test_gradients_agree_with_float64(target, harness):
    harness("backward", target)
