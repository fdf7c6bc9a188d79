"""A tiny, hand-made results folder with the schema every study writes (for report tests)."""

from __future__ import annotations

from pathlib import Path

from mnistlab import runs

PNG = bytes.fromhex(  # a valid 1×1 PNG
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489"
    "0000000d49444154789c6360f8cfc0f01f0005000201e2219bd50000000049454e44ae426082"
)
ENV = {
    "torch": "2.x",
    "python": "3.11",
    "numpy": "2",
    "mnistlab": "0.1.0",
    "cpu_count": 2,
    "platform": "linux",
    "cuda": None,
}
DATA = {"source": "cache", "location": "/c", "sha256": {"train-images": "ab" * 32}}


def _study(root: Path, study: str, metrics: dict, figures: list[str], extra=None) -> Path:
    folder = root / study / "abc123"
    runs.atomic_write_json(
        folder / "config.json", {"config": extra or {}, "seed": 0, "environment": ENV, "data": DATA}
    )
    for stem in figures:
        (folder / f"{stem}.png").write_bytes(PNG)
    runs.finish_run(folder, metrics)
    return folder


def make(root: Path, profile: str = "quick") -> Path:
    table = [
        {
            "size": n,
            "seeds": 2,
            "best_test_acc": [0.9, 0.01],
            "lowest_test_error": [0.1, 0.01],
            "epochs_to_best": [12, 3],
            "val_selected_test_acc": [0.88, 0.02],
            "val_selected_epoch": [10, 2],
        }
        for n in (10, 30)
    ]
    _study(
        root,
        "fewshot",
        {
            "backbones": {
                "resnet50": {
                    "table": table,
                    "random_weights": False,
                    "weights_source": "imported",
                    "weights_digest": "f" * 64,
                    "precision": "bf16",
                    "device": "cpu",
                    "n_test": 100,
                }
            },
            "skipped": {"vgg19": "no ImageNet weights for vgg19 available offline"},
        },
        ["error_vs_size", "epochs_vs_size", "curves_resnet50"],
        {
            "image_size": 224,
            "lr": 0.003,
            "batch_size": 32,
            "epochs": 5,
            "seeds": 2,
            "val_per_class": 20,
        },
    )
    stn_folder = _study(
        root,
        "stn",
        {
            "stn": {
                "final_test_acc": [0.99, 0.001],
                "best_test_acc": [0.991, 0.001],
                "per_seed_final": [0.99],
            },
            "baseline": {
                "final_test_acc": [0.985, 0.001],
                "best_test_acc": [0.986, 0.001],
                "per_seed_final": [0.985],
            },
            "padding": "sampled before normalising",
            "deformations": {
                "rotation": {"median": 6.0, "p90": 9.0, "threshold": 5, "learned": True},
                "zoom": {
                    "median": 0.01,
                    "p90": 0.02,
                    "threshold": 0.05,
                    "learned": False,
                    "mean_scale": 1.01,
                },
            },
        },
        ["accuracy_curves", "theta_hist", "theta_examples"],
    )
    runs.atomic_write_csv(stn_folder / "history_stn_seed0.csv", [{"epoch": 1}, {"epoch": 2}])
    acc = {k: [0.9, 0.0] for k in ("all", "original", "elastic", "zoom")}
    _study(
        root,
        "stn-deform",
        {
            "n_train": 900,
            "n_test": 300,
            "expand_seconds": 1.0,
            "final_test_acc": {"stn": acc, "baseline": acc},
            "final_train_acc": {"stn": acc, "baseline": acc},
            "mean_scale_by_kind": {"original": 1.0, "elastic": 1.0, "zoom": 0.7},
            "zoom_factor": 4.0,
        },
        ["accuracy_curves", "deform_examples", "scale_by_kind"],
    )
    dig = _study(root, "digits", {}, [])
    hp = {"lr": 0.001, "l2": 1e-5, "batch_size": 64}
    runs.atomic_write_json(
        dig / "pretrain" / "result.json",
        {
            "hyperparameters": hp,
            "best_epoch": 3,
            "test_precision": 0.99,
            "test_acc": 0.99,
            "checkpoints": ["best.pt", "final.pt"],
        },
    )
    runs.atomic_write_json(
        dig / "tune" / "result.json",
        {
            "best": hp,
            "folds": 2,
            "n_trials": 2,
            "n_pruned": 0,
            "cv_mean_acc": 0.98,
            "cv_sd_acc": 0.001,
            "retrain_epochs": 4,
            "test_precision": 0.99,
            "test_acc": 0.99,
        },
    )
    variant = {
        "best_epoch": 3,
        "epochs_run": 5,
        "epochs_to_target": 2,
        "seconds": 1.0,
        "test_precision": 0.99,
        "best_val_acc": 0.99,
        "gap_acc_at_best": 0.01,
        "gap_loss_at_best": 0.02,
    }
    runs.atomic_write_json(
        dig / "batchnorm" / "result.json",
        {"target_val_acc": 0.98, "plain": variant, "batchnorm": {**variant, "epochs_to_target": 1}},
    )
    runs.atomic_write_json(
        dig / "dropout" / "result.json",
        {"rates": {"0.0": variant, "0.2": {**variant, "test_precision": 0.995}}},
    )
    for stem in ("batchnorm/curves", "dropout/curves", "transfer/bars"):
        (dig / f"{stem}.png").parent.mkdir(parents=True, exist_ok=True)
        (dig / f"{stem}.png").write_bytes(PNG)
    summary = {k: [0.7, 0.01] for k in ("test_precision", "test_acc", "val_acc")}
    for v, acc_v, secs in (("scratch", 0.9, 0.5), ("frozen5", 0.7, 2.0), ("cached5", 0.7, 0.5)):
        runs.atomic_write_json(
            dig / "transfer" / f"{v}.json",
            {
                "label": v,
                "n_train": 500,
                "n_val": 1000,
                "n_test": 4861,
                "source_model": "tune/model.pt",
                "seeds": [{"test_acc": acc_v}],
                "summary": {
                    **summary,
                    "test_acc": [acc_v, 0.01],
                    "seconds": [secs, 0.1],
                    "best_epoch": [10, 1],
                    "epochs_run": [30, 1],
                },
            },
        )
    runs.atomic_write_json(
        root / "manifest.json",
        {
            "profile": profile,
            "command": "mnistlab run all",
            "finished": "now",
            "folders": {s: f"{s}/abc123" for s in ("fewshot", "stn", "stn-deform", "digits")},
            "wall_seconds": {"stn": 12.0},
        },
    )
    return root
