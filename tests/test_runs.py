from dataclasses import dataclass

import pytest

from mnistlab import io as mio
from mnistlab import runs
from mnistlab.errors import AlreadyRunningError, CorruptFileError, MnistlabError


@dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    sizes: tuple = (10, 30)


def test_config_hash_stable_and_sensitive():
    assert runs.config_hash(Cfg()) == runs.config_hash(Cfg())
    assert runs.config_hash(Cfg()) != runs.config_hash(Cfg(lr=0.2))


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.json"
    runs.write_json(target, {"a": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        runs.write_json(target, {"a": Boom()})
    assert runs.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[: len(raw) // 2],  # truncated
        lambda raw: raw.replace(b'"a": 1', b'"a": 7'),  # a changed number
        lambda raw: b"{}",  # no digest
        lambda raw: b"\xff\xfe\x00garbage",  # not UTF-8
        lambda raw: raw.replace(b'"_sha256": "', b'"_sha256": "0'),  # a damaged digest
    ],
)
def test_verified_json_refuses_any_damage(tmp_path, damage):
    path = tmp_path / "m.json"
    runs.write_json(path, {"a": 1, "b": [0.5, float("nan")], "c": {"d": "e"}})
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptFileError, match=r"m\.json"):
        runs.read_json(path)


def test_verified_container_refuses_any_damage(tmp_path):
    path = tmp_path / "c.bin"
    mio.write_verified(path, b"payload" * 100)
    assert mio.read_verified(path) == b"payload" * 100
    raw = path.read_bytes()
    for offset in (0, 20, len(raw) - 1):
        bad = bytearray(raw)
        bad[offset] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.raises(CorruptFileError):
            mio.read_verified(path)


def test_run_lifecycle(tmp_path):
    folder = runs.run_dir(tmp_path, "study", Cfg())
    with runs.Run(folder, Cfg(), provenance={"source": "test"}) as run:
        assert run.finished is None
        cfg = runs.read_json(folder / "config.json")
        assert cfg["config"]["lr"] == 0.1 and cfg["data"] == {"source": "test"}
        assert "torch" in cfg["environment"] and cfg["results_format"] == runs.RESULTS_FORMAT
        assert not runs.is_complete(folder)
        run.finish({"acc": 0.9})
    assert runs.is_complete(folder)
    with runs.Run(folder, Cfg()) as run:  # finished: loaded, not redone
        assert run.finished == {"acc": 0.9}
    (folder / "checkpoint.pt").write_bytes(b"x")
    (folder / "run.log").write_text("log")
    with runs.Run(folder, Cfg(), force=True) as run:
        assert run.finished is None
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "config.json", "run.log"]


def test_a_run_folder_has_one_writer(tmp_path):
    with (
        runs.Run(tmp_path, Cfg()),
        pytest.raises(AlreadyRunningError, match=r"already being computed by PID \d+"),
        runs.Run(tmp_path, Cfg()),
    ):
        pass
    with runs.Run(tmp_path, Cfg()):  # released when the first writer is done
        pass


def test_a_corrupt_finished_result_names_the_remedy(tmp_path):
    with runs.Run(tmp_path, Cfg()) as run:
        run.finish({"acc": 0.9})
    (tmp_path / "metrics.json").write_text('{"acc": 0.9')
    with (
        pytest.raises(MnistlabError, match=r"metrics\.json is corrupt.*--force"),
        runs.Run(tmp_path, Cfg()),
    ):
        pass


def test_sessions_counts_each_start_logged_by_the_suite(tmp_path):
    """The report marks a resumed run's wall time; it counts the sessions from run.log."""
    import logging

    from mnistlab import suite

    assert runs.sessions(tmp_path) == 0
    for _ in range(2):
        with suite._logging_to(tmp_path):
            logging.getLogger("mnistlab").info(f"stn{runs.SESSION_START}{tmp_path}")
            logging.getLogger("mnistlab").info("stn: epoch 1 done")
    assert runs.sessions(tmp_path) == 2
