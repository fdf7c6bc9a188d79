from dataclasses import dataclass

import pytest

from mnistlab import runs


@dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    sizes: tuple = (10, 30)


def test_config_hash_stable_and_sensitive():
    assert runs.config_hash(Cfg()) == runs.config_hash(Cfg())
    assert runs.config_hash(Cfg()) != runs.config_hash(Cfg(lr=0.2))


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.json"
    runs.atomic_write_json(target, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        runs.atomic_write_json(target, {"a": Boom()})
    assert runs.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_run_lifecycle(tmp_path):
    folder = runs.run_dir(tmp_path, "study", Cfg())
    runs.start_run(folder, Cfg(), seed=3)
    assert not runs.is_complete(folder)
    cfg = runs.read_json(folder / "config.json")
    assert cfg["config"]["lr"] == 0.1 and cfg["seed"] == 3 and "torch" in cfg["environment"]
    runs.finish_run(folder, {"acc": 0.9})
    assert runs.is_complete(folder)
    runs.atomic_write_csv(folder / "h.csv", [{"epoch": 1, "a": 2}, {"epoch": 2, "b": 3}])
    assert runs.read_csv(folder / "h.csv")[1] == {"epoch": "2", "a": "", "b": "3"}


def test_begin_resumes_skips_finished_and_force_clears(tmp_path):
    folder = tmp_path / "run"
    assert runs.begin(folder, Cfg(), force=False) is None  # fresh: config written
    (folder / "checkpoint.pt").write_bytes(b"x")
    assert runs.begin(folder, Cfg(), force=False) is None  # interrupted: checkpoints kept
    assert (folder / "checkpoint.pt").is_file()
    runs.finish_run(folder, {"acc": 1.0})
    assert runs.begin(folder, Cfg(), force=False) == {"acc": 1.0}  # finished: not redone
    (folder / "run.log").write_text("log")
    assert runs.begin(folder, Cfg(), force=True) is None
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "run.log"]
