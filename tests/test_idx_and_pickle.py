import gzip
import os
import pickle

import numpy as np
import pytest

from mnistlab.data.idx import encode_idx, parse_idx, read_idx
from mnistlab.data.safepickle import UnsafePickleError, safe_loads
from mnistlab.errors import MnistlabError


def test_idx_roundtrip_plain_and_gz(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = encode_idx(arr)
    assert data[:4] == b"\x00\x00\x08\x03"
    np.testing.assert_array_equal(parse_idx(data), arr)
    (tmp_path / "a.gz").write_bytes(gzip.compress(data))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    labels = np.array([1, 2, 3], dtype=np.uint8)
    assert encode_idx(labels)[:4] == b"\x00\x00\x08\x01"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"\x12\x34" + d[2:], "bad IDX magic"),
        (lambda d: d[:-5], "wrong length"),
        (lambda d: d + b"\x00", "wrong length"),
        (lambda d: d[:6], "header truncated"),
        (lambda d: d[:2], "not an IDX file"),
    ],
)
def test_idx_corrupt_gives_clear_error(mutate, message):
    data = encode_idx(np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(MnistlabError, match=message):
        parse_idx(mutate(data), "x")


def test_corrupt_gzip_is_clear_error(tmp_path):
    good = gzip.compress(encode_idx(np.zeros((3, 4), dtype=np.uint8)))
    (tmp_path / "bad.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(MnistlabError, match=r"bad\.gz"):
        read_idx(tmp_path / "bad.gz")


def test_safe_loads_rebuilds_numpy_tuples():
    obj = ((np.ones((2, 3), np.float32), np.arange(2)), (np.zeros(1), np.array([5])))
    # protocol 3: Python 3 writes protocol-2 bytes via _codecs.encode, which the Python 2
    # pickle in the wheel never uses (and we refuse)
    out = safe_loads(pickle.dumps(obj, protocol=3))
    np.testing.assert_array_equal(out[0][0], obj[0][0])
    assert out[0][1].dtype == obj[0][1].dtype


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/mnistlab-pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    payload = pickle.dumps((_Evil(),), protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        safe_loads(payload)
    assert not os.path.exists("/tmp/mnistlab-pwned")


def test_pickle_of_other_class_refused():
    import collections

    with pytest.raises(UnsafePickleError, match="OrderedDict"):
        safe_loads(pickle.dumps(collections.OrderedDict(a=1), protocol=2))


def test_garbage_pickle_is_clear_error():
    with pytest.raises(MnistlabError, match="corrupt pickle"):
        safe_loads(b"\x80\x02garbage")
