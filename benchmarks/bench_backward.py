"""Forward plus backward (gradients of q, k, v) of every registered linattn backend.

The timed call runs the forward and ``torch.autograd.grad`` with a fixed random upstream
gradient, as one training step of the attention would.
"""
BENCH_TARGETS = "linattn"
BENCH_PASS = "fwd+bwd"
BENCH_DECODE = False


def test_forward_backward(bench, bench_target, bench_shape):
    bench(bench_target, bench_shape, BENCH_PASS)
