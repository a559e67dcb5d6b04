"""Forward pass of every registered linattn backend over the selected shapes.

One test per (backend, shape): the output is checked against the float64 reference,
then timed; FLOPs, bytes, roofline fraction and peak memory land in ``extra_info``.
"""
BENCH_TARGETS = "linattn"
BENCH_PASS = "fwd"
BENCH_DECODE = False


def test_forward(bench, bench_target, bench_shape):
    bench(bench_target, bench_shape, BENCH_PASS)
