"""A study on a two-node Ray cluster on loopback, in network and process namespaces of its own."""

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from search.cluster import experiment_folder, trial_resources
from search.study import Study, StudyError
from tests.conftest import tiny_study_dict

PORT = 6391
TRIALS = 2

# Everything runs inside `unshare`: a network namespace (only its own loopback, so nothing leaves
# it) and a process namespace, whose processes, Ray's included, the kernel ends with the script.
CLUSTER_SCRIPT = """
set -e
ip link set lo up
ray="{bin}/ray"
"$ray" start --head --port={port} --num-cpus=1 --num-gpus=1 --node-ip-address=127.0.0.1 \
    --include-dashboard=false --disable-usage-stats >/dev/null
"$ray" start --address=127.0.0.1:{port} --num-cpus=1 --num-gpus=1 --node-ip-address=127.0.0.1 \
    --disable-usage-stats >/dev/null
"{python}" -m search.cli run "{study}" --address 127.0.0.1:{port} --run-dir "{run_dir}" --no-progress
"""


def can_unshare():
    return subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    if not can_unshare():
        if os.environ.get("CI"):
            pytest.fail("unshare -n -p cannot create namespaces here; the cluster test needs root")
        pytest.skip("unshare -n -p cannot create namespaces here (needs root)")
    folder = tmp_path_factory.mktemp("cluster")
    study_file = folder / "study.yaml"
    study_file.write_text(
        yaml.safe_dump(
            tiny_study_dict(
                name="cluster",
                budget={"trials": TRIALS, "max_epochs": 1},
                search={"sampler": "random", "concurrency": 2, "scheduler": "none"},
                resources={"cpus": 1, "gpus": 0.5},
                cluster={"checkpoint_storage": str(folder / "shared")},
            )
        )
    )
    run_dir = folder / "run"
    script = CLUSTER_SCRIPT.format(
        bin=Path(sys.executable).parent, python=sys.executable, port=PORT, study=study_file, run_dir=run_dir
    )
    env = {**os.environ, "RAY_TMPDIR": str(folder / "ray"), "RAY_AUTH_MODE": "disabled"}
    completed = subprocess.run(
        ["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    storage = f"sqlite:///{run_dir / 'study.db'}"
    trials = optuna.load_study(study_name="cluster", storage=storage).trials
    return folder, trials


@pytest.mark.slow
def test_trials_ran_on_both_nodes(cluster_run):
    _, trials = cluster_run
    assert len(trials) == TRIALS
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    nodes = {trial.user_attrs["placements"][0]["node_id"] for trial in trials}
    assert len(nodes) == 2


@pytest.mark.slow
def test_fractional_gpu_reaches_ray(cluster_run):
    _, trials = cluster_run
    for trial in trials:
        placement = trial.user_attrs["placements"][0]
        assert placement["resources"]["GPU"] == 0.5
        assert placement["gpu_ids"] == ["0"]
        # No CUDA device here: the trial trains on the CPU (with a warning).
        assert placement["device"] == "cpu"


@pytest.mark.slow
def test_checkpoints_go_to_checkpoint_storage(cluster_run):
    folder, trials = cluster_run
    for trial in trials:
        trial_folder = Path(trial.user_attrs["trial_folder"])
        assert trial_folder.parent == folder / "shared" / "cluster" / "tune"
        assert list(trial_folder.glob("checkpoint_*/trial.pt"))


def test_trial_resources_include_memory():
    study = Study.from_dict(tiny_study_dict(resources={"cpus": 2, "gpus": 0.25, "memory_mb": 512}))
    assert trial_resources(study) == {"cpu": 2, "gpu": 0.25, "memory": 512 * 2**20}


def test_experiment_folder_default_and_shared(tmp_path):
    study = Study.from_dict(tiny_study_dict())
    assert experiment_folder(study, tmp_path) == str(tmp_path)
    shared = study.replace(cluster={"checkpoint_storage": "/mnt/shared/", "max_failures": 1})
    assert experiment_folder(shared, tmp_path) == "/mnt/shared/tiny"


def test_relative_checkpoint_storage_rejected():
    with pytest.raises(StudyError, match="cluster.checkpoint_storage: 'shared' must be an absolute path"):
        Study.from_dict(tiny_study_dict(cluster={"checkpoint_storage": "shared"}))


def test_unwritable_checkpoint_storage_rejected(tmp_path):
    from search.cluster import check_checkpoint_storage

    blocker = tmp_path / "file"
    blocker.write_text("")
    study = Study.from_dict(tiny_study_dict(cluster={"checkpoint_storage": str(blocker)}))
    with pytest.raises(StudyError, match=f"cluster.checkpoint_storage: cannot write to '{blocker}'"):
        check_checkpoint_storage(study)
