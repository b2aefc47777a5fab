"""The report, status and comparison of one real small run, watched while it runs.

One module fixture starts ``ftsearch run`` in a subprocess and polls the run's storage the way
``ftsearch status`` does until the run ends. Every test then reads that run.
"""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from search import report_data
from search.cli import main
from search.export import chromium_command, find_chromium
from search.storage import open_run
from tests.conftest import tiny_study_dict

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TRIALS = 4
RUN_TIMEOUT_S = 420


def _require_chromium():
    """Skip without Chromium, except under CI, where a missing Chromium is a failure."""
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing under CI; .ci/run installs it with apt-get")
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def live_run(tmp_path_factory):
    """Run a 4-trial study in a subprocess and take status snapshots until it ends."""
    folder = tmp_path_factory.mktemp("live")
    study_file = folder / "live.yaml"
    study = tiny_study_dict(
        name="live",
        budget={"trials": TRIALS, "max_epochs": 2},
        search={"sampler": "random", "seed": 0, "concurrency": 2},
        space={"lr": {"choices": [3.0e-3, 1.0e-7]}, "label_smoothing": {"choices": [0.0, 0.1]}, "batch_size": 64},
    )
    study_file.write_text(yaml.safe_dump(study), encoding="utf-8")

    run_dir = folder / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, "-m", "search.cli", "run", str(study_file), "--run-dir", str(run_dir), "--no-progress"]
    process = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    snapshots = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while process.poll() is None and time.monotonic() < deadline:
            try:
                _, optuna_study = open_run(run_dir)
                snapshots.append(report_data.status_data(optuna_study))
            except FileNotFoundError:
                pass
            time.sleep(0.5)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
    assert process.returncode == 0, output
    return run_dir, snapshots, output


def test_status_sees_running_then_finished_trials(live_run):
    _, snapshots, _ = live_run
    running = [s for s in snapshots if s["running"]]
    assert running, "no snapshot saw a running trial"
    assert all(s["counts"]["RUNNING"] == len(s["running"]) for s in snapshots)
    finished_while_running = [
        s for s in snapshots if s["counts"]["COMPLETE"] + s["counts"]["PRUNED"] >= 1 and s["running"]
    ]
    assert finished_while_running, "no snapshot saw a finished trial while others ran"
    first = next(s for s in snapshots if s["running"])
    assert first["running"][0]["params"]["lr"] in ("0.003", "1e-07")
    assert max(len(s["running"]) for s in snapshots) <= 2


def test_status_command_after_the_run(live_run, capsys):
    run_dir, _, _ = live_run
    assert main(["status", str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"Study live: {TRIALS} trials (")
    assert "Best: trial " in text
    assert "val_accuracy " in text
    assert "Running: none" in text


def test_status_of_missing_run(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert "study.yaml is missing; give the run directory that `ftsearch run` wrote" in capsys.readouterr().err


def test_metric_name_is_stored(live_run):
    run_dir, _, _ = live_run
    _, optuna_study = open_run(run_dir)
    assert optuna_study.metric_names == ["val_accuracy"]


def test_confusion_matrix_of_best_trial(live_run):
    run_dir, _, _ = live_run
    study, optuna_study = open_run(run_dir)
    best = report_data.best_configuration(optuna_study)["trials"][0]
    trial = optuna_study.trials[best["trial"]]
    data = report_data.prediction_data(run_dir, study, trial, max_images=5)
    matrix = np.array(data["matrix"])
    assert matrix.shape == (10, 10)
    assert data["accuracy"] == pytest.approx(trial.value, abs=1e-6)
    assert np.trace(matrix) / matrix.sum() == pytest.approx(trial.value, abs=1e-6)
    assert data["misclassified_total"] == matrix.sum() - np.trace(matrix)
    assert len(data["misclassified"]) == min(5, data["misclassified_total"])
    for item in data["misclassified"]:
        assert item["true"] != item["predicted"]
        assert item["image"].shape == (32, 32, 3)
        assert item["image"].dtype == np.uint8


def test_timeline_names_ray_workers(live_run):
    run_dir, _, _ = live_run
    _, optuna_study = open_run(run_dir)
    timeline = report_data.timeline_data(optuna_study, run_dir)
    assert len(timeline["trials"]) == TRIALS
    for row in timeline["trials"]:
        host, pid = row["worker"].rsplit(":", 1)
        assert host
        assert pid.isdigit()
    assert 1 <= timeline["max_concurrent"] <= 2


def test_tensorboard_event_files_per_trial(live_run):
    run_dir, _, _ = live_run
    folders = sorted((run_dir / "tune").glob("trial_*"))
    assert len(folders) == TRIALS
    for folder in folders:
        events = list(folder.glob("events.out.tfevents.*"))
        assert len(events) == 1, folder
        assert b"val_accuracy" in events[0].read_bytes()


@pytest.fixture(scope="module")
def report_page(live_run):
    run_dir, _, _ = live_run
    assert main(["report", str(run_dir)]) == 0
    return run_dir / "report.html"


def test_report_page_is_self_contained(report_page):
    page = report_page.read_text(encoding="utf-8")
    assert "<script src=" not in page
    # plotly.js is inlined in <head>; nothing after it names a network address.
    body = page[page.index("</head>"):]
    assert "http://" not in body
    assert "https://" not in body
    for heading in ("Optimization history", "Parameter importances", "Learning curves", "Timeline", "All trials"):
        assert f">{heading}" in page
    assert "Misclassified validation images" in page or "every validation image is classified correctly" in page


def test_report_draws_in_headless_chromium(report_page, tmp_path):
    _require_chromium()
    url = report_page.resolve().as_uri()
    profile = tmp_path / "profile"
    dom = subprocess.run(
        chromium_command(profile, "--virtual-time-budget=15000", "--dump-dom", url),
        capture_output=True, text=True, timeout=180, check=True,
    ).stdout
    page = report_page.read_text(encoding="utf-8")
    sections = {part.split('"', 1)[0]: part for part in page.split('<h2 id="')[1:]}
    # These figures draw whenever one trial completed; which trials ASHA stops varies with timing.
    for name in ("history", "learning_curves", "timeline", "confusion"):
        assert 'class="plotly-graph-div"' in sections[name], name
    expected = page.count('class="plotly-graph-div"')
    # Plotly draws each figure into at least one <svg class="main-svg"> once its script ran.
    assert dom.count('class="main-svg"') >= expected
    shot = tmp_path / "report.png"
    subprocess.run(
        chromium_command(tmp_path / "profile2", "--virtual-time-budget=15000", "--window-size=1280,5000", f"--screenshot={shot}", url),
        capture_output=True, timeout=180, check=True,
    )
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    colors = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colors) > 500, "the screenshot has too few colors to hold drawn figures"
    keep = os.environ.get("FTSEARCH_KEEP_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)


def test_comparison_of_two_runs(live_run, tmp_path, capsys):
    run_dir, _, _ = live_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    output = tmp_path / "comparison.html"
    assert main(["report", str(run_dir), str(copy), "--compare", str(output)]) == 0
    assert f"Wrote {output}" in capsys.readouterr().out
    page = output.read_text(encoding="utf-8")
    assert page.count("<td>live (") == 2
    assert "Best value so far, per run" in page
