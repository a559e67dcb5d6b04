"""Baselines in the same run: fla's chunk_simple_gla, lightning_attn's lightning_attn2 and
``torch.nn.functional.scaled_dot_product_attention`` (the softmax yardstick), each where
it is installed and can do the shape. fla and lightning_attn are checked against the
float64 reference like linattn's backends; SDPA computes a different operator.
"""
import pytest

BENCH_TARGETS = "baselines"
BENCH_DECODE = False


@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_baseline(bench, bench_target, bench_shape, pass_):
    bench(bench_target, bench_shape, pass_)
