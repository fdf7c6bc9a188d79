import math

import pytest
import torch

from mnistlab.cli import main
from mnistlab.errors import MnistlabError
from mnistlab.models.mlp import MLPConfig, build_mlp
from mnistlab.studies import digits as dg
from mnistlab.studies import digits_transfer as tr
from mnistlab.train.checkpoint import save_checkpoint
from mnistlab.train.fit import FitConfig, adam_with_l2, fit
from mnistlab.train.loop import predict_logits


def _synthetic(n=300, seed=0, classes=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, 784, generator=g)
    x = (centres[y] + 0.8 * torch.randn(n, 784, generator=g)).sigmoid()
    return x, y


def test_xavier_init_statistics():
    model = build_mlp(MLPConfig(), seed=0)
    for layer in [b[0] for b in model.hidden] + [model.head]:
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound + 1e-6
        assert abs(w.var().item() / (2 / (fan_in + fan_out)) - 1) < 0.15
        assert abs(w.mean().item()) < 0.1 * bound
        assert torch.all(layer.bias == 0)
    same = build_mlp(MLPConfig(), seed=0)
    assert torch.equal(same.head.weight, model.head.weight)


def _one_step(model, x, y):
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = adam_with_l2(model, 1e-2, 1e-4)
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}


@pytest.mark.parametrize(
    ("variant", "changed_blocks"),
    [("frozen5", set()), ("reuse4", set()), ("unfreeze2", {3, 4}), ("scratch", {0, 1, 2, 3, 4})],
)
def test_only_the_right_parameters_train(variant, changed_blocks):
    x, y = _synthetic(64)
    source = build_mlp(MLPConfig(), seed=1)
    if variant == "scratch":
        model = build_mlp(MLPConfig(), seed=2)
        prefix = "hidden"
    else:
        model = tr.Reused(source, 4 if variant == "reuse4" else 5, 5, seed=2)
        if variant == "unfreeze2":
            model.unfreeze(2)
        prefix = "stack"
    changed = _one_step(model, x, y)
    blocks = {int(k.split(".")[1]) for k in changed if k.startswith(prefix)}
    assert blocks == changed_blocks
    assert {"head.weight", "head.bias"} <= changed
    if variant != "scratch":  # the source model itself is never modified
        assert torch.equal(
            source.hidden[0][0].weight, build_mlp(MLPConfig(), seed=1).hidden[0][0].weight
        )


def test_frozen_blocks_stay_in_eval_mode():
    source = build_mlp(MLPConfig(batch_norm=True, dropout=0.5), seed=0)
    model = tr.Reused(source, 5, 5, seed=0).train()
    assert not any(m.training for b in model.stack for m in b.modules())
    model.unfreeze(2)
    model.train()
    assert [b.training for b in model.stack] == [False, False, False, True, True]


def test_cached_and_uncached_paths_give_the_same_logits():
    x, _ = _synthetic(50)
    model = tr.Reused(build_mlp(MLPConfig(), seed=0), 5, 5, seed=3).eval()
    with torch.inference_mode():
        direct = model(x)
        cached = model.head(model.features(x).clone())
    torch.testing.assert_close(direct, cached)


def test_cached_variant_matches_uncached_training():
    x, y = _synthetic(400)
    td = tr.TransferData((x[:100], y[:100]), (x[100:200], y[100:200]), (x[200:], y[200:]))
    cfg = dg.DigitsConfig(transfer_max_epochs=15, transfer_patience=5)
    hp = {"lr": 1e-3, "l2": 1e-5, "batch_size": 32}
    source = build_mlp(MLPConfig(), seed=0)
    _, a = tr.run_variant("frozen5", source, td, cfg, hp, seed=4)
    _, b = tr.run_variant("cached5", source, td, cfg, hp, seed=4)
    assert a["best_epoch"] == b["best_epoch"]
    assert abs(a["test_acc"] - b["test_acc"]) < 0.01


def test_checkpoints_reload_identically_and_resume_after_interrupt(tmp_path):
    x, y = _synthetic(200)
    train, val = (x[:150], y[:150]), (x[150:], y[150:])
    mcfg = MLPConfig(dropout=0.2)
    cfg = FitConfig(lr=1e-3, batch_size=32, max_epochs=6, patience=10)

    ref = build_mlp(mcfg, seed=0)
    ref_res = fit(
        ref,
        train,
        val,
        cfg,
        seed=0,
        ckpt_dir=tmp_path / "ref",
        checkpoint_every=2,
        model_config=mcfg.to_dict(),
    )
    names = sorted(p.name for p in (tmp_path / "ref").glob("*.pt"))
    assert names == [
        "best.pt",
        "epoch_002.pt",
        "epoch_004.pt",
        "epoch_006.pt",
        "final.pt",
        "last.pt",
    ]
    loaded = dg.load_model(tmp_path / "ref" / "best.pt", mcfg)
    torch.testing.assert_close(predict_logits(loaded, x), predict_logits(ref, x), rtol=0, atol=0)
    final = dg.load_model(tmp_path / "ref" / "final.pt")
    assert final.config == mcfg

    def interrupt(epoch):
        if epoch == 5:
            raise KeyboardInterrupt

    m1 = build_mlp(mcfg, seed=0)
    with pytest.raises(KeyboardInterrupt):
        fit(
            m1,
            train,
            val,
            cfg,
            seed=0,
            ckpt_dir=tmp_path / "run",
            checkpoint_every=2,
            model_config=mcfg.to_dict(),
            on_epoch=interrupt,
        )
    m2 = build_mlp(mcfg, seed=0)  # a fresh process would start like this
    res = fit(
        m2,
        train,
        val,
        cfg,
        seed=0,
        ckpt_dir=tmp_path / "run",
        checkpoint_every=2,
        model_config=mcfg.to_dict(),
    )
    assert [r["val_loss"] for r in res.history] == [r["val_loss"] for r in ref_res.history]
    for a, b in zip(m2.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = build_mlp(MLPConfig(hidden=(50, 50)), seed=0)
    save_checkpoint(
        tmp_path / "o.pt", {"config": other.config.to_dict(), "model": other.state_dict()}
    )
    with pytest.raises(MnistlabError, match="expected"):
        dg.load_model(tmp_path / "o.pt", MLPConfig())
    save_checkpoint(
        tmp_path / "w.pt", {"config": MLPConfig().to_dict(), "model": other.state_dict()}
    )
    with pytest.raises(MnistlabError, match="does not fit this architecture"):
        dg.load_model(tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MnistlabError, match="cannot load checkpoint"):
        dg.load_model(tmp_path / "junk.pt")


def test_tiny_tuning_run_writes_a_readable_optuna_study(tmp_path):
    import optuna

    x, y = _synthetic(300)
    data = dg.Data(x, y, x[:50], y[:50])
    cfg = dg.DigitsConfig(trials=2, folds=2, tune_max_epochs=2, tune_patience=1)
    res = dg._part_tune(cfg, data, tmp_path, dg.Progress())
    study = optuna.load_study(
        study_name="digits-cv", storage=f"sqlite:///{tmp_path / 'tune' / 'optuna.db'}"
    )
    assert len(study.trials) == 2
    assert set(res["best"]) == {"lr", "l2", "batch_size"} and len(res["fold_acc"]) == 2
    assert (tmp_path / "tune" / "model.pt").is_file()
    more = dg._part_tune(
        dg.DigitsConfig(trials=3, folds=2, tune_max_epochs=2, tune_patience=1),
        data,
        tmp_path,
        dg.Progress(),
    )  # resumes: runs one more trial only
    assert more["n_trials"] == 3


def test_cli_bad_digit_input_exits_2(tmp_path, capsys, mnist):
    assert main(["run", "digits", "--target", "3-7", "--results", str(tmp_path)]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["run", "digits", "--per-digit", "9000", "--results", str(tmp_path)]) == 2
    assert "digit 5 has only 5421" in capsys.readouterr().err


def test_end_to_end_tiny_digits_run(tmp_path, mnist):
    cfg = dg.DigitsConfig(
        limit=4000,
        trials=2,
        folds=2,
        tune_max_epochs=2,
        max_epochs=3,
        transfer_seeds=2,
        transfer_max_epochs=20,
        transfer_patience=5,
        per_digit=20,
        val_per_digit=20,
        dropout_rates=(0.3,),
    )
    res = dg.run(cfg, tmp_path / "run")
    for v in dg.VARIANTS:
        assert len(res[v]["seeds"]) == 2
    for a, b in zip(res["frozen5"]["seeds"], res["cached5"]["seeds"], strict=True):
        assert abs(a["test_acc"] - b["test_acc"]) < 0.01
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert (tmp_path / "run" / "transfer" / "bars.png").is_file()
    assert (tmp_path / "run" / "batchnorm" / "curves.png").is_file()
    again = dg.run(cfg, tmp_path / "run", parts=("unfreeze",))  # finished parts are loaded
    assert again["unfreeze2"]["seeds"] == res["unfreeze2"]["seeds"]
