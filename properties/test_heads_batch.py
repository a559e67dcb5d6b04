"""MQA/GQA against expanded heads, and batch invariance."""


def test_gqa_equals_expanded_heads(target, harness):
    harness("gqa", target)


def test_batch_element_alone_equals_its_slice(target, harness):
    harness("batch_invariance", target)
