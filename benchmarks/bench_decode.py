"""Decoding: one new token against the recurrent state ``[B, H, D, E]``, every backend
that supports state (N = 1, ``initial_state`` given, the final state returned).
"""
BENCH_TARGETS = "linattn"
BENCH_PASS = "fwd"
BENCH_DECODE = True


def test_decode_step(bench, bench_target, bench_shape):
    bench(bench_target, bench_shape, BENCH_PASS)
