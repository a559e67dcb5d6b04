"""Baseline decode step: fla's fused_recurrent_simple_gla with a state, where installed."""
BENCH_TARGETS = "baselines"
BENCH_DECODE = True


def test_baseline_decode_step(bench, bench_target, bench_shape):
    bench(bench_target, bench_shape, "fwd")
