"""data_format.py: vocabulary sizes stay within the ids' dtype."""

import pytest

from conftest import ROOT  # noqa: F401  (the repository on sys.path)
import data_format as fmt


def test_vocabulary_sizes_fit_the_ids_dtype():
    assert fmt.parse_vocab_sizes(f"[{2**31}, 1]", expected_len=2) == (2**31, 1)
    for bad, entry in [("99999999999999999999", "99999999999999999999"),
                       (f"[1, {2**31 + 1}]", str(2**31 + 1)), ("[1, -3]", "-3")]:
        with pytest.raises(ValueError, match=rf"vocab_sizes\[\d\] is {entry}, expected an "
                                             rf"integer in \[1, 2147483648\]"):
            fmt.parse_vocab_sizes(bad, expected_len=None)
