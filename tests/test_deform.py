import numpy as np
import pytest
import torch

from mnistlab.data import DeformParams, deform_images, elastic, expand, zoom_out
from mnistlab.data import deform as dmod
from mnistlab.errors import MnistlabError


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist["test"][0][:24], mnist["test"][1][:24]


def test_elastic_shape_dtype_determinism_and_workers(digits):
    x, _ = digits
    a = elastic(x, seed=1, workers=1)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, elastic(x, seed=1, workers=2))  # independent of the worker count
    assert not torch.equal(a, elastic(x, seed=2, workers=1))
    assert not torch.equal(a, x)
    assert torch.equal(elastic(x, seed=1, params=DeformParams(sigma=0.0), workers=1), x)


def test_zoom_out_keeps_about_a_sixteenth_of_the_ink(digits):
    x, _ = digits
    z = zoom_out(x, 4.0, workers=1)
    assert z.shape == x.shape and z.dtype == torch.uint8
    ratio = z.double().sum() / x.double().sum()
    assert 1 / 16 * 0.7 < ratio < 1 / 16 * 1.3
    ys, xs = torch.nonzero(z.sum(0)).T  # ink confined to the central 7×7 (+ interpolation edge)
    assert ys.min() >= 9 and ys.max() <= 18 and xs.min() >= 9 and xs.max() <= 18


def test_unknown_deformation_is_clear_error(digits):
    with pytest.raises(MnistlabError, match="unknown deformation 'twirl'"):
        deform_images(digits[0], "twirl")


def test_expand_layout_kinds_and_cache(digits, tmp_cache, monkeypatch):
    x, y = digits
    e = expand(x, y, seed=0, workers=1)
    n = len(x)
    assert e.images.shape == (3 * n, 28, 28) and e.images.dtype == torch.uint8
    assert e.kind.tolist() == [0] * n + [1] * n + [2] * n
    assert torch.equal(e.labels, y.repeat(3)) and torch.equal(e.images[:n], x)
    files = list((tmp_cache / "expand").glob("*.npy"))
    assert len(files) == 1

    def boom(*a, **k):
        raise AssertionError("should have been loaded from the cache")

    real = dmod.elastic
    monkeypatch.setattr(dmod, "elastic", boom)
    again = expand(x, y, seed=0, workers=1)
    assert torch.equal(again.images, e.images)
    monkeypatch.setattr(dmod, "elastic", real)  # (undo() would also drop the tmp cache)
    other = expand(x, y, seed=0, params=DeformParams(sigma=3.0), workers=1)  # new key
    assert not torch.equal(other.images[n : 2 * n], e.images[n : 2 * n])
    files[0].write_bytes(b"corrupt")  # a damaged cache file is recomputed, not trusted
    assert torch.equal(expand(x, y, seed=0, workers=1).images, e.images)
    raw = bytearray(files[0].read_bytes())
    raw[-10] ^= 0x01  # one flipped bit inside the stored pixels
    files[0].write_bytes(bytes(raw))
    assert torch.equal(expand(x, y, seed=0, workers=1).images, e.images)
    raw = bytearray(files[0].read_bytes())
    raw[20] ^= 0x01  # a flipped bit in the digest header
    files[0].write_bytes(bytes(raw))
    assert torch.equal(expand(x, y, seed=0, workers=1).images, e.images)


@pytest.mark.parametrize(
    "params",
    [{"sigma": float("nan")}, {"sigma": -1.0}, {"zoom_factor": float("inf")}, {"zoom_factor": 0.5}],
)
def test_deformation_parameters_are_validated(params):
    with pytest.raises(MnistlabError, match="finite number"):
        DeformParams(**params)


def test_broken_elasticdeform_explains_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "elasticdeform":
            raise ImportError("numpy.core.multiarray failed to import")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(MnistlabError, match="--no-binary elasticdeform"):
        dmod._elasticdeform()


def test_bad_images_rejected():
    with pytest.raises(MnistlabError, match="uint8"):
        elastic(np.zeros((2, 28, 28), np.float32), seed=0)
