"""The recurrent state: splitting a sequence, decoding token by token, packed sequences."""


def test_split_with_carried_state_equals_whole(target, harness):
    harness("state_split", target)


def test_prefill_then_decode_equals_whole(target, harness):
    """chunked == recurrent, within one backend: one call, then one call per token."""
    harness("recurrent_steps", target)


def test_packed_sequences_equal_separate_calls(target, harness):
    harness("varlen", target)
