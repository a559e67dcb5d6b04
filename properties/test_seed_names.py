"""The seed's names (normal_/flash_linear_attention) agree with linear_attention."""


def test_seed_names_agree(target, harness):
    harness("seed_names", target)
