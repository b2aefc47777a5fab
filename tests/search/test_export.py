"""PNG export of report figures through kaleido and a network-off Chromium."""

import sys

import optuna
import pytest

from search import report, report_data
from search.export import CHROMIUM_FLAGS, ExportError, chromium_command, export_png, find_chromium


def small_figures():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda trial: trial.suggest_float("a", 0, 1) + trial.suggest_float("b", 0, 1), n_trials=5)
    return report.build_figures({"history": report_data.history_data(study)})


def test_chromium_command_keeps_network_off(tmp_path):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed")
    command = chromium_command(tmp_path, "--dump-dom", "file:///x.html")
    for flag in ("--headless", "--disable-background-networking", "--disable-component-update", "--disable-sync"):
        assert flag in command
    assert f"--user-data-dir={tmp_path}" in command
    assert command[-1] == "file:///x.html"
    assert tuple(command[1 : 1 + len(CHROMIUM_FLAGS)]) == CHROMIUM_FLAGS


def test_missing_kaleido_named_with_the_fix(tmp_path, monkeypatch):
    # None in sys.modules makes `import kaleido` raise ImportError, as on a machine without it.
    monkeypatch.setitem(sys.modules, "kaleido", None)
    with pytest.raises(ExportError, match=r"PNG export needs kaleido: pip install 'ftsearch\[png\]'"):
        export_png({}, tmp_path)


@pytest.mark.slow
def test_png_export_writes_images(tmp_path):
    pytest.importorskip("kaleido", reason="PNG export is an optional extra: pip install 'ftsearch[png]'")
    if find_chromium() is None:
        pytest.skip("Chromium is not installed")
    from PIL import Image

    written = export_png({**small_figures(), "empty": None}, tmp_path)
    assert written == [tmp_path / "history.png"]
    image = Image.open(written[0])
    assert image.size == (1000, 420)
    assert len(set(image.convert("RGB").getdata())) > 50
