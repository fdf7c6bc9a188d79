import subprocess
import sys

from mnistlab.cli import main


def test_help_and_module_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "mnistlab", "--help"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and "data" in proc.stdout


def test_unknown_command_and_choice_exit_2(capsys):
    assert _exit(["frobnicate"]) == 2
    assert _exit(["data", "show", "--deform", "twirl"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'twirl'" in err and "Traceback" not in err


def _exit(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_bad_data_dir_is_one_line(tmp_path, capsys):
    assert main(["data", "info", "--data-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


def test_data_show_and_info(mnist, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["data", "show", "--deform", "zoom", "-n", "3", "-o", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert main(["data", "info"]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["data", "show", "-n", "20000", "-o", str(out)]) == 2
