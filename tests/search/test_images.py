"""The data check and decoding of image folders and CSV files, on files written with PIL."""

import logging

import numpy as np
import pytest
import yaml
from PIL import Image

from search.cli import main
from search.data import load_dataset
from search.preflight import max_batch_size
from search.study import Study, StudyError
from tests.conftest import tiny_study_dict
from tests.search.image_data import class_image, folder_study, write_class_folders, write_truncated


def load(mapping):
    """Check and decode the data of the study ``mapping`` as ``prepare`` does, without building its model."""
    study = Study.from_dict(mapping)
    return load_dataset(study.data, study.model.image_size, study.model.in_chans, max_batch_size(study))


def problems_of(mapping):
    with pytest.raises(StudyError) as error:
        load(mapping)
    return error.value.problems


def test_folder_split_by_fractions(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 10, "dog": 10, "owl": 10})
    dataset = load(folder_study(root, val_fraction=0.2, test_fraction=0.2))
    assert dataset.classes == ("cat", "dog", "owl")
    assert dataset.train_x.shape == (18, 3, 32, 32)
    assert dataset.train_x.dtype == np.uint8
    assert np.bincount(dataset.val_y).tolist() == [2, 2, 2]
    assert np.bincount(dataset.test_y).tolist() == [2, 2, 2]
    assert dataset.notes == ()


def test_folder_split_is_seeded(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 10, "dog": 10})
    first = load(folder_study(root, seed=3))
    second = load(folder_study(root, seed=3))
    other = load(folder_study(root, seed=4))
    assert np.array_equal(first.val_x, second.val_x)
    assert not np.array_equal(first.val_x, other.val_x)


def test_split_folders_used_as_given(tmp_path):
    write_class_folders(tmp_path / "images" / "train", {"cat": 6, "dog": 5})
    write_class_folders(tmp_path / "images" / "val", {"cat": 2, "dog": 3})
    write_class_folders(tmp_path / "images" / "test", {"cat": 1, "dog": 1})
    dataset = load(folder_study(tmp_path / "images"))
    assert (len(dataset.train_y), len(dataset.val_y), len(dataset.test_y)) == (11, 5, 2)
    assert dataset.val_y.tolist() == [0, 0, 1, 1, 1]


def test_missing_test_folder_carved_from_train(tmp_path):
    write_class_folders(tmp_path / "images" / "train", {"cat": 10, "dog": 10})
    write_class_folders(tmp_path / "images" / "val", {"cat": 3, "dog": 3})
    dataset = load(folder_study(tmp_path / "images", test_fraction=0.2))
    assert (len(dataset.train_y), len(dataset.val_y), len(dataset.test_y)) == (16, 6, 4)
    assert np.bincount(dataset.test_y).tolist() == [2, 2]


def test_relative_path_read_from_study_folder(tmp_path):
    write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(folder_study("images")))
    assert main(["validate", str(study_file)]) == 0
    study = Study.from_dict(folder_study("images"), source=study_file)
    assert study.data.path == str(tmp_path / "images")


def test_hidden_files_and_folders_ignored(tmp_path, caplog):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    write_class_folders(root / ".ipynb_checkpoints", {"cat": 2})
    (root / "dog" / "notes.txt").write_text("taken in 2024")
    with caplog.at_level(logging.WARNING, logger="search"):
        dataset = load(folder_study(root))
    assert dataset.classes == ("cat", "dog")
    assert len(dataset.train_y) + len(dataset.val_y) + len(dataset.test_y) == 10
    assert (
        f"Ignored 3 hidden files and folders (names starting with '.') in {root}: "
        ".DS_Store, .ipynb_checkpoints, cat/.DS_Store" in caplog.messages
    )
    assert f"Ignored 1 file that is not an image in a class folder in {root}: dog/notes.txt" in caplog.messages


@pytest.mark.parametrize(
    "kind, write, words",
    [
        ("empty", lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
        ("corrupt", lambda path: path.write_bytes(b"this is not a PNG file" * 20), "is not an image file Pillow can read"),
        ("truncated", write_truncated, "is truncated"),
    ],
)
def test_bad_file_stops_study(tmp_path, kind, write, words):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    write(root / "dog" / f"{kind}.png")
    (problem,) = problems_of(folder_study(root))
    assert problem == (
        f"data: 1 image file in {root} {words}: dog/{kind}.png; replace or remove them, or set "
        "data.on_bad_file: skip to leave them out"
    )


def test_bad_files_listed_first_few_and_count(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    for index in range(7):
        (root / "cat" / f"empty{index}.png").write_bytes(b"")
    write_truncated(root / "dog" / "half.png")
    problems = problems_of(folder_study(root))
    assert problems == [
        f"data: 7 image files in {root} are empty (0 bytes): cat/empty0.png, cat/empty1.png, "
        "cat/empty2.png, cat/empty3.png, cat/empty4.png and 2 more; replace or remove them, or set "
        "data.on_bad_file: skip to leave them out",
        f"data: 1 image file in {root} is truncated: dog/half.png; replace or remove them, or set "
        "data.on_bad_file: skip to leave them out",
    ]


def test_bad_files_skipped_when_study_says_so(tmp_path, caplog):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    (root / "cat" / "empty.png").write_bytes(b"")
    write_truncated(root / "dog" / "half.png")
    with caplog.at_level(logging.WARNING, logger="search"):
        dataset = load(folder_study(root, on_bad_file="skip"))
    assert len(dataset.train_y) + len(dataset.val_y) + len(dataset.test_y) == 10
    note = "skipped 2 bad image files (data.on_bad_file: skip): 1 empty (0 bytes) (cat/empty.png); 1 truncated (dog/half.png)"
    assert dataset.notes == (note,)
    assert "S" + note[1:] in caplog.messages


def test_empty_class_folder(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    (root / "owl").mkdir()
    (root / "owl" / ".DS_Store").write_bytes(b"x")
    (problem,) = problems_of(folder_study(root))
    assert problem == f"data.path: 1 class folder in {root} has no image files: owl; add images or remove the folders"


def test_class_missing_from_split_folder(tmp_path):
    write_class_folders(tmp_path / "images" / "train", {"cat": 5, "dog": 5, "owl": 5})
    write_class_folders(tmp_path / "images" / "val", {"cat": 2, "dog": 2})
    write_class_folders(tmp_path / "images" / "test", {"cat": 2, "dog": 2, "owl": 2})
    (problem,) = problems_of(folder_study(tmp_path / "images"))
    assert problem == (
        "data.path: classes missing from the val split: owl (found in train, test); add val/<class> "
        "folders with images, or remove these classes from every split"
    )


def test_class_emptied_by_skipped_files_missing_from_split(tmp_path):
    write_class_folders(tmp_path / "images" / "train", {"cat": 5, "dog": 5})
    write_class_folders(tmp_path / "images" / "val", {"cat": 2})
    (tmp_path / "images" / "val" / "dog").mkdir()
    (tmp_path / "images" / "val" / "dog" / "broken.png").write_bytes(b"")
    write_class_folders(tmp_path / "images" / "test", {"cat": 2, "dog": 2})
    (problem,) = problems_of(folder_study(tmp_path / "images", on_bad_file="skip"))
    assert problem == (
        "data: classes missing from the val split: dog; every class needs images in train, val and "
        "test (given splits: train, val, test); add images of these classes to that split, or remove the classes"
    )


def test_split_folders_mixed_with_class_folders(tmp_path):
    write_class_folders(tmp_path / "images" / "train", {"cat": 5, "dog": 5})
    write_class_folders(tmp_path / "images", {"owl": 3})
    (problem,) = problems_of(folder_study(tmp_path / "images"))
    assert problem.startswith(f"data.path: {tmp_path / 'images'} mixes split folders (train) with other folders (owl)")


def test_single_class_rejected(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5})
    (problem,) = problems_of(folder_study(root))
    assert problem == f"data.path: only one class (cat) in {root}; a classifier needs at least 2 class folders"


def test_missing_folder(tmp_path):
    (problem,) = problems_of(folder_study(tmp_path / "nowhere"))
    assert problem.startswith(f"data.path: folder '{tmp_path / 'nowhere'}' not found")


def test_mode_conversions_counted_and_applied(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 4, "dog": 4})
    Image.new("L", (20, 20), 90).save(root / "cat" / "gray.png")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(root / "cat" / "clear.png")
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([10, 200, 30] + [0] * 765)
    palette.save(root / "dog" / "palette.png")
    dataset = load(folder_study(root, val_fraction=0.3, test_fraction=0.3))
    assert dataset.notes == (
        "converted to RGB: 1 L (grayscale, replicated), 1 P (palette, via RGBA), 1 RGBA (composited on white)",
    )
    images = np.concatenate([dataset.train_x, dataset.val_x, dataset.test_x])
    pixels = {tuple(image[:, 0, 0].tolist()) for image in images}
    assert (90, 90, 90) in pixels
    assert (255, 255, 255) in pixels
    assert (10, 200, 30) in pixels


def test_grayscale_study_gets_one_channel(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5}, mode="L")
    class_image(0, 50).save(root / "cat" / "colour.png")
    dataset = load(folder_study(root, val_fraction=0.3, test_fraction=0.3) | {"model": {"name": "resnet10t", "image_size": 32, "in_chans": 1}})
    assert dataset.train_x.shape[1:] == (1, 32, 32)
    assert dataset.notes == ("converted to grayscale (L): 1 RGB",)


def test_grayscale_data_in_rgb_study_suggests_in_chans(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5}, mode="L")
    dataset = load(folder_study(root))
    assert dataset.notes == ("converted to RGB: 10 L (grayscale, replicated); set model.in_chans: 1 to train on one channel",)
    assert np.array_equal(dataset.train_x[:, 0], dataset.train_x[:, 2])


def test_shorter_side_resized_then_centre_cropped(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)  # A red quarter at the left falls outside the centre crop.
    wide[:, 10:] = (0, 0, 255)
    Image.fromarray(wide).save(root / "cat" / "wide.png")
    dataset = load(folder_study(root, val_fraction=0.3, test_fraction=0.3))
    images = np.concatenate([dataset.train_x, dataset.val_x, dataset.test_x])
    blue = [image for image in images if image[2].min() > 200 and image[0].max() < 50]
    assert len(blue) == 1


def test_train_split_smaller_than_batch_size(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    mapping = folder_study(root)
    mapping["space"] = {"batch_size": {"choices": [4, 16]}}
    (problem,) = problems_of(mapping)
    assert problem == (
        "data: the train split has 6 images, fewer than the largest batch_size 16 in the space; "
        "lower space.batch_size to at most 6 or add images"
    )


def test_memory_limit_stops_before_decoding(tmp_path):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    (root / "cat" / "broken.png").write_bytes(b"")  # Not reported: the limit is checked first.
    (problem,) = problems_of(folder_study(root, max_memory_mb=0.02))
    assert problem == (
        "data.max_memory_mb: the decoded images need 0.0 MiB (11 images x 3 channels x 32 x 32 bytes), "
        "more than data.max_memory_mb 0.02; lower model.image_size (at most 25 px fits), use at most 6 "
        "images, or raise data.max_memory_mb if every node has that much memory"
    )


def test_memory_limit_applies_to_digits():
    with pytest.raises(StudyError, match=r"need 1031.9 MiB \(1797 images x 3 channels x 448 x 448 bytes\)"):
        load_dataset(Study.from_dict(tiny_study_dict(data={"max_memory_mb": 1000})).data, 448, 3)


def write_csv(tmp_path, rows, header="path,label"):
    path = tmp_path / "labels.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def csv_study(path, **data_settings):
    return tiny_study_dict(name="csv", data={"source": "csv", "path": str(path), **data_settings}, space={"batch_size": 4})


def test_csv_paths_relative_to_csv_file(tmp_path):
    write_class_folders(tmp_path / "pictures", {"a": 8, "b": 8})
    rows = [f"pictures/a/{i:03d}.png,10" for i in range(8)] + [f"pictures/b/{i:03d}.png,2" for i in range(8)]
    dataset = load(csv_study(write_csv(tmp_path, rows), val_fraction=0.25, test_fraction=0.25))
    assert dataset.classes == ("2", "10")
    assert np.bincount(dataset.test_y).tolist() == [2, 2]
    red = dataset.train_x[dataset.train_y == 1][:, 0].mean()
    assert red > 150  # Class "10" is the red "a" folder.


def test_csv_split_and_label_columns(tmp_path):
    write_class_folders(tmp_path, {"a": 6, "b": 6})
    rows = [f"{name}/{i:03d}.png,{name},{'train' if i < 4 else 'val' if i == 4 else 'test'}" for name in "ab" for i in range(6)]
    path = write_csv(tmp_path, rows, header="file,kind,part")
    dataset = load(csv_study(path, path_column="file", label_column="kind", split_column="part"))
    assert (len(dataset.train_y), len(dataset.val_y), len(dataset.test_y)) == (8, 2, 2)


def test_csv_missing_column(tmp_path):
    path = write_csv(tmp_path, ["a.png,cat"], header="file,label")
    (problem,) = problems_of(csv_study(path))
    assert problem == (
        f"data.path_column: column 'path' not found in {path} (columns: file, label); set "
        "data.path_column to one of its columns"
    )


def test_csv_missing_files_and_blank_rows(tmp_path):
    write_class_folders(tmp_path, {"a": 5, "b": 5})
    rows = [f"{name}/{i:03d}.png,{name}" for name in "ab" for i in range(5)]
    path = write_csv(tmp_path, [*rows, "a/gone.png,a", ",b"])
    (problem,) = problems_of(csv_study(path))
    assert problem == (
        f"data.path: 1 row of {path} with an empty path or label: line 13; fill them in or remove them"
    )
    path = write_csv(tmp_path, [*rows, "a/gone.png,a"])
    (problem,) = problems_of(csv_study(path))
    assert problem == (
        f"data: 1 image file in {path} is not found: a/gone.png; replace or remove them, or set "
        "data.on_bad_file: skip to leave them out"
    )


def test_csv_unknown_split(tmp_path):
    path = write_csv(tmp_path, ["a.png,cat,train", "b.png,dog,valid"], header="path,label,split")
    problems = problems_of(csv_study(path, split_column="split"))
    assert f"data.split_column: 1 rows of {path} with an unknown split: line 3 ('valid'); valid splits: train, val, test" in problems


@pytest.mark.parametrize(
    "data, message",
    [
        ({"source": "folder"}, "data.path: missing; data.source 'folder' reads the folder of class folders"),
        ({"source": "csv"}, "data.path: missing; data.source 'csv' reads the CSV file of path and label"),
        ({"path": "images"}, "data.path: 'images' is only read when data.source is folder or csv"),
        ({"source": "folder", "path": "x", "label_column": "y"}, "data.label_column: 'y' is only read when data.source is csv"),
        ({"source": "csv", "path": "x.csv", "label_column": "path"}, "data: the CSV column settings name the same column twice (path, path)"),
        ({"source": "images"}, "data.source: 'images' is not valid; valid choices: digits, folder, csv"),
        ({"on_bad_file": "ignore"}, "data.on_bad_file: 'ignore' is not valid; valid choices: error, skip"),
        ({"max_memory_mb": 0}, "data.max_memory_mb: 0 must be greater than 0"),
    ],
)
def test_invalid_data_settings(data, message):
    with pytest.raises(StudyError) as error:
        Study.from_dict(tiny_study_dict(data=data))
    assert any(problem.startswith(message) for problem in error.value.problems), error.value.problems


def test_validate_prints_data_notes(tmp_path, capsys):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    Image.new("L", (20, 20), 90).save(root / "cat" / "gray.png")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(folder_study(root)))
    assert main(["validate", str(study_file)]) == 0
    out = capsys.readouterr().out
    assert "  data: 2 classes, 5 train / 3 validation / 3 test images at 3x32x32" in out
    assert "  data: converted to RGB: 1 L (grayscale, replicated)" in out


def test_validate_reports_bad_file_without_traceback(tmp_path, capsys):
    root = write_class_folders(tmp_path / "images", {"cat": 5, "dog": 5})
    (root / "cat" / "broken.jpg").write_bytes(b"")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(folder_study(root)))
    assert main(["validate", str(study_file)]) == 2
    err = capsys.readouterr().err
    assert f"ftsearch: error: data: 1 image file in {root} is empty (0 bytes): cat/broken.jpg" in err
    assert "Traceback" not in err


def test_test_command_on_missing_run(tmp_path, capsys):
    assert main(["test", str(tmp_path / "nothing")]) == 2
    assert "ftsearch: error: no run found in" in capsys.readouterr().err
