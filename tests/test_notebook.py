"""A study called from a Jupyter notebook shows a progress bar (a real kernel, via nbclient)."""

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (dev extra)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (dev extra)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (dev extra)")


def test_a_notebook_call_shows_a_progress_bar(tmp_path, mnist):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from mnistlab import progress\nprint(type(progress.default()).__name__)"
        ),
        nbformat.v4.new_code_cell(
            "from mnistlab.studies.stn import tutorial as stn\n"
            "cfg = stn.STNConfig(epochs=1, seeds=1, limit_train=256, limit_test=64,\n"
            "                    train_eval_size=32, device='cpu')\n"
            f"m = stn.run(cfg, {str(tmp_path / 'run')!r})\n"
            "print(round(m['models']['stn']['primary']['all'][0], 3))"
        ),
    ]
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    first = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert first.strip() == "NotebookProgress"
    outputs = nb.cells[1].outputs
    shown = "".join(o.get("text", "") for o in outputs) + "".join(
        str(o.get("data", {})) for o in outputs
    )
    assert "stn: stn × 1 seed(s)" in shown  # the bar's description, rendered in the notebook
