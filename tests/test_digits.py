import math

import pytest
import torch

from mnistlab import runs
from mnistlab.cli import main
from mnistlab.errors import MnistlabError
from mnistlab.models.mlp import MLPConfig, build_mlp
from mnistlab.studies import digits as dg
from mnistlab.studies.digits import transfer as tr
from mnistlab.studies.digits import tune as digits_tune
from mnistlab.studies.digits.common import load_digits, load_model
from mnistlab.train.checkpoint import save_checkpoint

TINY = dict(
    limit=4000,
    trials=3,
    folds=2,
    tune_max_epochs=2,
    max_epochs=3,
    checkpoint_every=1,
    transfer_seeds=2,
    transfer_max_epochs=20,
    transfer_patience=5,
    per_digit=20,
    val_per_digit=20,
    dropout_rates=(0.3,),
    device="cpu",
)


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


def _one_step(model):
    x, y = torch.rand(64, 784), torch.arange(64) % 5
    before = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    return {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}


@pytest.mark.parametrize(
    ("variant", "changed_blocks"),
    [("frozen5", set()), ("reuse4", set()), ("unfreeze2", {3, 4}), ("scratch", {0, 1, 2, 3, 4})],
)
def test_only_the_right_parameters_train(variant, changed_blocks):
    source = build_mlp(MLPConfig(), seed=1)
    if variant == "scratch":
        model, prefix = build_mlp(MLPConfig(), seed=2), "hidden"
    else:
        model, prefix = tr.Reused(source, 4 if variant == "reuse4" else 5, 5, seed=2), "stack"
        if variant == "unfreeze2":
            model.unfreeze(2)
    changed = _one_step(model)
    assert {int(k.split(".")[1]) for k in changed if k.startswith(prefix)} == changed_blocks
    assert {"head.weight", "head.bias"} <= changed
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


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = build_mlp(MLPConfig(hidden=(50, 50)), seed=0)
    save_checkpoint(
        tmp_path / "o.pt", {"config": other.config.to_dict(), "model": other.state_dict()}
    )
    with pytest.raises(MnistlabError, match="expected"):
        load_model(tmp_path / "o.pt", MLPConfig())
    save_checkpoint(
        tmp_path / "w.pt", {"config": MLPConfig().to_dict(), "model": other.state_dict()}
    )
    with pytest.raises(MnistlabError, match="does not fit this architecture"):
        load_model(tmp_path / "w.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MnistlabError, match="corrupt"):
        load_model(tmp_path / "junk.pt")


def test_pretrain_checkpoints_reload_identically(tmp_path, mnist):
    cfg = dg.DigitsConfig(**TINY)
    res = dg.run(cfg, tmp_path, parts=("pretrain",))["pretrain"]
    folder = tmp_path / "pretrain" / "checkpoints"
    assert res["checkpoints"] == [
        "best.pt",
        "epoch_001.pt",
        "epoch_002.pt",
        "epoch_003.pt",
        "final.pt",
    ]
    best = load_model(folder / "best.pt", MLPConfig())
    data = load_digits("0-4", cfg.limit)
    from mnistlab.studies.digits.common import test_metrics

    assert test_metrics(best, data.x_test, data.y_test)["test_acc"] == res["test_acc"]
    assert load_model(folder / "final.pt").config == MLPConfig()


def test_end_to_end_tiny_digits_run(tmp_path, mnist):
    cfg = dg.DigitsConfig(**TINY)
    res = dg.run(cfg, tmp_path / "run")
    for v in dg.VARIANTS:
        assert len(res[v]["seeds"]) == 2
    for a, b in zip(res["frozen5"]["seeds"], res["cached5"]["seeds"], strict=True):
        assert a["test_acc"] == b["test_acc"]  # caching changes speed, not results
    assert res["unfreeze2"]["base_variant"] in ("frozen5", "reuse4")
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert (tmp_path / "run" / "transfer" / "bars.png").is_file()
    assert (tmp_path / "run" / "batchnorm" / "curves.png").is_file()
    again = dg.run(cfg, tmp_path / "run", parts=("unfreeze",))  # finished parts are loaded
    assert again["unfreeze2"]["seeds"] == res["unfreeze2"]["seeds"]


def _tune(tmp_path, **kw):
    cfg = dg.DigitsConfig(**{**TINY, "trials": 4, **kw})
    return dg.run(cfg, tmp_path, parts=("tune",))["tune"]


def _sequence(result):
    """The finished trials' parameters and scores, in order (failed attempts left out)."""
    return [
        (t["lr"], t["l2"], t["batch_size"], t["state"], t["value"]) for t in result["trial_params"]
    ]


def test_tuning_resumes_to_the_same_trials_after_ctrl_c(tmp_path, mnist, monkeypatch):
    ref = _tune(tmp_path / "ref")
    calls = {"n": 0}
    real = digits_tune.run_trial

    def interrupted(ctx, trial, hp):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C inside the third trial
            raise KeyboardInterrupt
        return real(ctx, trial, hp)

    monkeypatch.setattr(digits_tune, "run_trial", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path / "run")
    monkeypatch.setattr(digits_tune, "run_trial", real)
    resumed = _tune(tmp_path / "run")
    assert _sequence(resumed) == _sequence(ref)
    assert resumed["best"] == ref["best"] and resumed["test_acc"] == ref["test_acc"]


def test_tuning_resumes_to_the_same_trials_after_sigkill(tmp_path, mnist):
    """A real process, killed while a trial runs: the trial is left RUNNING in the database,
    and the resumed tuning re-runs it with its parameters."""
    import os
    import signal
    import subprocess
    import sys
    import time  # polling only: a hang is caught by the per-test timeout

    import optuna

    cfg = dg.DigitsConfig(limit=4000, trials=4, folds=2, device="cpu")
    ref = dg.run(cfg, tmp_path / "ref", parts=("tune",))["tune"]
    root = tmp_path / "results"
    argv = ["run", "digits", "--part", "tune", "--limit", "4000", "--trials", "4", "--folds", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", *argv, "--device", "cpu", "--results", str(root)],
        env={**os.environ, "MNISTLAB_PROGRESS": "lines"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    folder = root / "digits" / runs.config_hash(cfg)
    db = folder / "tune" / "optuna.db"
    try:
        while proc.poll() is None:  # poll the database until a trial runs after a finished one
            try:
                trials = optuna.load_study(study_name="digits-cv", storage=f"sqlite:///{db}").trials
            except Exception:  # not created yet
                trials = []
            if (
                trials
                and any(t.state.name == "COMPLETE" for t in trials)
                and trials[-1].state.name == "RUNNING"
            ):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    states = [
        t.state.name
        for t in optuna.load_study(study_name="digits-cv", storage=f"sqlite:///{db}").trials
    ]
    assert "RUNNING" in states  # killed mid-trial
    resumed = dg.run(cfg, folder, parts=("tune",))["tune"]
    assert _sequence(resumed) == _sequence(ref)
    assert resumed["best"] == ref["best"] and resumed["test_acc"] == ref["test_acc"]


def test_a_trial_killed_while_drawing_its_parameters_is_not_retried_half_drawn():
    """Killed between two ``suggest_*`` calls, a trial has some parameters stored: retrying
    it with those would mix a stored lr with a freshly drawn L2 (a run no uninterrupted
    tuning makes), so only fully drawn trials are re-queued."""
    import optuna

    study = optuna.create_study(direction="maximize")
    half = study.ask()
    half.suggest_float("lr", 1e-4, 1e-2, log=True)  # killed here: RUNNING, l2 never drawn
    whole = study.ask()
    digits_tune.suggest(whole)
    whole.set_user_attr("drawn", True)  # killed while training: RUNNING, all drawn
    assert digits_tune.repair(study) == 1
    queued = [t for t in study.get_trials() if t.state.name == "WAITING"]
    assert [t.user_attrs["retry_of"] for t in queued] == [whole.number]
    assert digits_tune.suggest(study.ask()) == whole.params  # the retry draws nothing new


def test_a_tampered_trial_is_refused(tmp_path, mnist):
    import sqlite3

    _tune(tmp_path, trials=2)
    db = tmp_path / "tune" / "optuna.db"
    with sqlite3.connect(db) as con:  # an impossible accuracy written into the database
        con.execute("UPDATE trial_values SET value = 1.93")
    (tmp_path / "tune" / "result.json").unlink()
    with pytest.raises(MnistlabError, match="does not verify"):
        _tune(tmp_path, trials=2)
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)  # a truncated database
    with pytest.raises(MnistlabError, match="tuning database"):
        _tune(tmp_path, trials=2)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "3-7"], "overlap"),
        (["--per-digit", "9000"], "digit 5 has only 5421"),
        (["--source", "0-4", "--target", "5-8"], "same number of digits"),
        (["--folds", "100000"], "--folds"),
        (["--target", "6-10"], "0–9"),
        (["--trials", "0"], "--trials"),
    ],
)
def test_cli_bad_digit_input_exits_2(argv, message, tmp_path, capsys):
    code = _exit(["run", "digits", "--results", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # no results folder for a rejected config


def _exit(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code
