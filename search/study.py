"""Study files: loading, the ``Study`` object and validation of everything but the model.

A study is a mapping of sections (see ``SECTIONS``); ``Study.from_dict`` checks every key and
value and raises one ``StudyError`` that lists all problems at once. Checks that need timm
(model names, weights, stage counts) live in :mod:`search.preflight`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from search.objectives import check_objective, resolve_objective, resolve_sampler
from spaces.params import Space, SpaceError
from spaces.terms import check_space

logger = logging.getLogger(__name__)

__all__ = ["Study", "StudyError", "load_study", "REPORTED_METRICS"]

# Metrics the trainable reports after every epoch, with the direction that improves each.
REPORTED_METRICS = {
    "val_accuracy": "maximize",
    "val_loss": "minimize",
    "train_loss": "minimize",
    # Reported only by trials whose ema_decay is above 0.
    "val_loss_ema": "minimize",
    "val_accuracy_ema": "maximize",
}
SAMPLERS = ("tpe", "random", "qmc", "gp", "nsga2")
SCHEDULERS = ("asha", "median", "none")
DATA_SOURCES = ("digits", "folder", "csv")
BAD_FILE_ACTIONS = ("error", "skip")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# "auto" is bf16 autocast on a CUDA device that supports it and float32 elsewhere.
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


class StudyError(ValueError):
    """An invalid study; the message lists every problem with its key, value and fix."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {problem}" for problem in self.problems)
            message = f"{len(self.problems)} problems in the study:\n{lines}"
        super().__init__(message)


def _option(kind: type | tuple[type, ...], check=None, **kwargs):
    """Declare a study setting: its accepted types and an optional value check."""
    return field(metadata={"kind": kind, "check": check}, **kwargs)


def _positive(value):
    return None if value > 0 else "must be greater than 0"


def _at_least_one(value):
    return None if value >= 1 else "must be at least 1"


def _non_negative(value):
    return None if value >= 0 else "must be 0 or more"


def _fraction(value):
    return None if 0 < value < 1 else "must be between 0 and 1 (exclusive)"


def _storage_location(value):
    if "://" in value or value.startswith("/"):
        return None
    return (
        "must be an absolute path that every Ray node reaches (such as /mnt/shared/ftsearch) "
        "or a URI such as s3://bucket/folder"
    )


def _one_of(choices):
    def check(value):
        if value in choices:
            return None
        return f"is not valid; valid choices: {', '.join(str(choice) for choice in choices)}"

    return check


@dataclass(frozen=True)
class ModelSettings:
    """The pretrained model: timm name, weight source, input size and normalization."""

    name: str | None = _option((str, type(None)), default=None)
    pretrained: str | dict = _option((str, dict, type(None)), default="none")
    image_size: int = _option(int, _at_least_one, default=224)
    in_chans: int = _option(int, _one_of((1, 3)), default=3)
    mean: list | None = _option((list, type(None)), default=None)
    std: list | None = _option((list, type(None)), default=None)
    # "package.module:function" returning a torch module instead of a timm model; see search.factories.
    factory: str | None = _option((str, type(None)), default=None)


@dataclass(frozen=True)
class DataSettings:
    """The data set and how it is split into train, validation and test."""

    source: str = _option(str, _one_of(DATA_SOURCES), default="digits")
    val_fraction: float = _option((int, float), _fraction, default=0.2)
    test_fraction: float = _option((int, float), _fraction, default=0.1)
    seed: int = _option(int, default=0)
    # "package.module:function" returning the splits instead of ``source``; see search.factories.
    factory: str | None = _option((str, type(None)), default=None)
    # Users' data (search.images): a folder of class folders, or a CSV file of path and label.
    path: str | None = _option((str, type(None)), default=None)
    path_column: str | None = _option((str, type(None)), default=None)
    label_column: str | None = _option((str, type(None)), default=None)
    split_column: str | None = _option((str, type(None)), default=None)
    on_bad_file: str = _option(str, _one_of(BAD_FILE_ACTIONS), default="error")
    max_memory_mb: float = _option((int, float), _positive, default=4096)


@dataclass(frozen=True)
class ObjectiveSettings:
    """The metric that ranks trials and whether larger is better."""

    metric: str = _option(str, _one_of(tuple(REPORTED_METRICS)), default="val_accuracy")
    direction: str | None = _option((str, type(None)), _one_of(("maximize", "minimize")), default=None)
    # The list form (see search.objectives): [{metric, direction}, ...], first the validation metric.
    metrics: list | None = _option((list, type(None)), default=None)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        """Every objective as (metric, direction), the validation metric first."""
        if self.metrics:
            return [(entry["metric"], entry["direction"]) for entry in self.metrics]
        return [(self.metric, self.resolved_direction)]

    @property
    def mode(self) -> str:
        """Ray Tune's word for the direction: ``max`` or ``min``."""
        return "max" if self.resolved_direction == "maximize" else "min"

    @property
    def resolved_direction(self) -> str:
        return self.direction or REPORTED_METRICS[self.metric]


@dataclass(frozen=True)
class BudgetSettings:
    """How many trials, how many epochs each, and an optional wall-clock limit in seconds."""

    trials: int = _option(int, _at_least_one, default=10)
    max_epochs: int = _option(int, _at_least_one, default=3)
    time_limit: float | None = _option((int, float, type(None)), _positive, default=None)


@dataclass(frozen=True)
class SearchSettings:
    """The Optuna sampler, the Ray Tune scheduler, concurrency and the seed."""

    sampler: str = _option(str, _one_of(SAMPLERS), default="tpe")
    scheduler: str = _option(str, _one_of(SCHEDULERS), default="asha")
    concurrency: int = _option(int, _at_least_one, default=1)
    seed: int = _option(int, default=0)
    startup_trials: int | None = _option((int, type(None)), _non_negative, default=None)
    grace_period: int = _option(int, _at_least_one, default=1)
    reduction_factor: int = _option(int, lambda v: None if v >= 2 else "must be at least 2", default=2)


@dataclass(frozen=True)
class ResourceSettings:
    """CPUs and GPUs reserved for each trial; fractions share a device between trials."""

    cpus: float = _option((int, float), _positive, default=1)
    gpus: float = _option((int, float), _non_negative, default=0)
    # Host memory per trial in MiB: Ray reserves it, and CPU trials fail past it (search.devices).
    memory_mb: int | None = _option((int, type(None)), _at_least_one, default=None)
    precision: str = _option(str, _one_of(PRECISIONS), default="auto")
    compile: str = _option(str, _one_of(COMPILE_MODES), default="none")


@dataclass(frozen=True)
class ClusterSettings:
    """Checkpoint storage shared by every Ray node, and the restarts of a trial whose worker died."""

    checkpoint_storage: str | None = _option((str, type(None)), _storage_location, default=None)
    max_failures: int = _option(int, _non_negative, default=2)


MLFLOW_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def _tracking_uri(value):
    scheme = value.split("://", 1)[0] if "://" in value else None
    if scheme in MLFLOW_SCHEMES:
        return None
    return (
        f"is not an MLflow tracking URI (schemes: {', '.join(MLFLOW_SCHEMES)}); write "
        "sqlite:////abs/path/mlflow.db for a local store or http://127.0.0.1:5000 for a server"
    )


@dataclass(frozen=True)
class TrackingSettings:
    """Destinations of per-trial metrics besides TensorBoard: an MLflow tracking URI and experiment."""

    mlflow_uri: str | None = _option((str, type(None)), _tracking_uri, default=None)
    mlflow_experiment: str | None = _option((str, type(None)), default=None)


SECTIONS = {
    "model": ModelSettings,
    "data": DataSettings,
    "objective": ObjectiveSettings,
    "budget": BudgetSettings,
    "search": SearchSettings,
    "resources": ResourceSettings,
    "tracking": TrackingSettings,
    "cluster": ClusterSettings,
}
TOP_LEVEL_KEYS = ("name", *SECTIONS, "storage", "space")


@dataclass(frozen=True)
class Study:
    """A validated study. Build one with ``Study.from_dict`` or ``load_study``."""

    name: str
    model: ModelSettings
    data: DataSettings
    objective: ObjectiveSettings
    budget: BudgetSettings
    search: SearchSettings
    resources: ResourceSettings
    tracking: TrackingSettings
    space: Space
    storage: str | None = None
    source: Path | None = None
    cluster: ClusterSettings = ClusterSettings()

    @classmethod
    def from_dict(cls, mapping: Mapping[str, Any], source: Path | None = None) -> Study:
        """Validate ``mapping`` (a parsed study file) and return the study.

        Raises:
            StudyError: listing every problem found.
        """
        problems: list[str] = []
        if not isinstance(mapping, Mapping):
            raise StudyError(
                f"a study must be a mapping of sections, got {type(mapping).__name__}; "
                f"start from studies/digits.yaml"
            )
        for key in mapping:
            if key not in TOP_LEVEL_KEYS:
                problems.append(_unknown_key(key, TOP_LEVEL_KEYS, "study"))
        name = mapping.get("name")
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            problems.append(
                f"name: invalid value {name!r}; give the study a name of letters, digits, "
                "'_', '.' or '-' (it names the run directory and the Optuna study)"
            )
        sections = {}
        for key, settings_class in SECTIONS.items():
            sections[key] = _parse_section(settings_class, mapping.get(key), key, problems)
        storage = mapping.get("storage")
        if storage is not None and (not isinstance(storage, str) or "://" not in storage):
            problems.append(
                f"storage: invalid value {storage!r}; give an SQLAlchemy URL such as "
                "sqlite:////abs/path/study.db or postgresql://user@host/db, or leave it out "
                "for SQLite in the run directory"
            )
        from search.factories import check_factory_study, parse_study_space, without_factory_params

        space = Space({})
        try:
            space = parse_study_space(mapping.get("space"), "space")
        except SpaceError as error:
            problems.append(str(error))
        problems += check_space(without_factory_params(space))
        problems += check_factory_study(mapping, sections, space)
        problems += _check_across_sections(sections)
        problems += _check_data_source(sections["data"])
        problems += check_objective(mapping.get("objective"))
        problems += _check_ema_objective(sections["objective"], space)
        if problems:
            raise StudyError(problems)
        sections["data"] = _resolve_data_path(sections["data"], source)
        sections["model"] = _resolve_weight_files(sections["model"], source)
        sections["objective"] = resolve_objective(sections["objective"])
        sections["search"] = resolve_sampler(sections["search"], mapping.get("search"), sections["objective"])
        study = cls(name=name, space=space, storage=storage, source=source, **sections)
        study._warn_about_replaced_settings()
        return study

    def _warn_about_replaced_settings(self) -> None:
        _warn_about_dropped_color_jitter(self.space)
        _warn_about_long_warmup(self.space, self.budget.max_epochs)
        if self.search.concurrency > self.budget.trials:
            logger.warning(
                "search.concurrency %d is more than budget.trials %d; at most %d trials run at once",
                self.search.concurrency,
                self.budget.trials,
                self.budget.trials,
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the fully resolved study as plain data, defaults and absolute paths included."""
        from search.factories import resolve_factory_file

        data: dict[str, Any] = {"name": self.name}
        for key in SECTIONS:
            data[key] = dataclasses.asdict(getattr(self, key))
        # A factory module beside the study file is named by its absolute file, so the study
        # saved in a run directory or exported elsewhere still finds it.
        for key in ("model", "data"):
            data[key]["factory"] = resolve_factory_file(data[key]["factory"], self.source)
        data["storage"] = self.storage
        data["space"] = self.space.to_spec()
        return data

    def to_yaml(self) -> str:
        """Return the resolved study as YAML that ``load_study`` reads back unchanged."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def replace(self, **changes: Any) -> Study:
        """Return a validated copy with top-level keys or whole sections replaced."""
        data = self.to_dict()
        data.update(copy.deepcopy(changes))
        return Study.from_dict(data, source=self.source)

    @property
    def backbones(self) -> list[str]:
        """Every timm model name a trial may build; none when model.factory builds the model."""
        if self.model.factory is not None:
            return []
        if "backbone" in self.space:
            return [name for name in self.space["backbone"].values() if isinstance(name, str)]
        return [self.model.name]


def _check_across_sections(sections: dict[str, Any]) -> list[str]:
    """Return problems that involve settings of different sections."""
    problems = []
    data, model = sections["data"], sections["model"]
    if data is not None and data.val_fraction + data.test_fraction >= 1:
        problems.append(
            f"data: data.val_fraction {data.val_fraction} + data.test_fraction "
            f"{data.test_fraction} leave no training images; keep their sum below 1"
        )
    if model is not None:
        for name in ("mean", "std"):
            values = getattr(model, name)
            if values is None:
                continue
            valid = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            if not valid or len(values) not in (1, model.in_chans) or (name == "std" and min(values) <= 0):
                problems.append(
                    f"model.{name}: invalid value {values!r}; give {model.in_chans} numbers, one "
                    f"per channel{' (each greater than 0)' if name == 'std' else ''}"
                )
    return problems


def _check_data_source(data: DataSettings | None) -> list[str]:
    """Return problems of the settings that only some data sources read."""
    if data is None:
        return []
    problems = []
    if data.source in ("folder", "csv") and data.path is None:
        what = "folder of class folders" if data.source == "folder" else "CSV file of path and label"
        problems.append(
            f"data.path: missing; data.source {data.source!r} reads the {what} that data.path "
            "names (relative to the study file)"
        )
    if data.source == "digits" and data.path is not None:
        problems.append(
            f"data.path: {data.path!r} is only read when data.source is folder or csv; remove "
            "it or set data.source"
        )
    columns = ("path_column", "label_column", "split_column")
    for name in columns:
        if data.source != "csv" and getattr(data, name) is not None:
            problems.append(
                f"data.{name}: {getattr(data, name)!r} is only read when data.source is csv; "
                "remove it or set data.source: csv"
            )
    given = [data.path_column or "path", data.label_column or "label"]
    given += [data.split_column] if data.split_column is not None else []
    if data.source == "csv" and len(set(given)) < len(given):
        problems.append(
            f"data: the CSV column settings name the same column twice ({', '.join(given)}); "
            "give path_column, label_column and split_column different columns"
        )
    return problems


def _resolve_data_path(data: DataSettings, source: Path | None) -> DataSettings:
    """Make a relative ``data.path`` absolute: relative to the study file, else the current folder."""
    if data.path is None:
        return data
    path = Path(data.path).expanduser()
    if not path.is_absolute():
        path = (source.parent if source is not None else Path.cwd()) / path
    return dataclasses.replace(data, path=str(path.resolve()))


def _resolve_weight_files(model: ModelSettings, source: Path | None) -> ModelSettings:
    """Make relative weight file paths absolute, so the study saved in a run directory still finds them.

    A relative path is read from the study file's folder, or from the current folder when the
    file is not there, as ``search.preflight`` reads it.
    """
    if source is None:
        return model

    def resolve(value):
        if not isinstance(value, str) or value in ("none", "hub") or value.startswith("package:"):
            return value
        path = Path(value).expanduser()
        if path.is_absolute():
            return value
        beside_study = source.parent / path
        return str((beside_study if beside_study.exists() or not path.exists() else path).resolve())

    pretrained = model.pretrained
    if isinstance(pretrained, Mapping):
        pretrained = {name: resolve(value) for name, value in pretrained.items()}
    else:
        pretrained = resolve(pretrained)
    return dataclasses.replace(model, pretrained=pretrained)


def _warn_about_dropped_color_jitter(space: Space) -> None:
    ops = space["randaugment_ops"].values() if "randaugment_ops" in space else [0]
    jitter = space["color_jitter"].values() if "color_jitter" in space else [0]
    if max(ops) > 0 and max(jitter) > 0:
        logger.warning(
            "space.color_jitter is ignored in trials whose randaugment_ops is above 0: timm's "
            "transform leaves color jitter out when RandAugment is on"
        )


def _warn_about_long_warmup(space: Space, max_epochs: int) -> None:
    """Warn when some trials would spend every epoch warming up their learning rate."""
    warmups = space["warmup_epochs"].values() if "warmup_epochs" in space else [0]
    longest = max(value for value in warmups if isinstance(value, (int, float)))
    if longest >= max_epochs:
        logger.warning(
            "space.warmup_epochs reaches %g but budget.max_epochs is %d, so such trials never leave "
            "the warmup; keep warmup_epochs below %d",
            longest,
            max_epochs,
            max_epochs,
        )


def _check_ema_objective(objective, space: Space) -> list[str]:
    """Return a problem when the objective is an EMA metric that some trials would not report."""
    if objective is None or not objective.metric.endswith("_ema"):
        return []
    decays = space["ema_decay"].values() if "ema_decay" in space else [0.0]
    if all(isinstance(decay, (int, float)) and decay > 0 for decay in decays):
        return []
    ema_spec = f"{space['ema_decay'].to_spec()!r}" if "ema_decay" in space else "left out (0, off)"
    return [
        f"objective.metric: {objective.metric} needs the moving average of the weights in every "
        f"trial, but space.ema_decay is {ema_spec}; set space.ema_decay above 0 (e.g. 0.999, or "
        "a range whose low is above 0), or choose val_accuracy or val_loss"
    ]


def _unknown_key(key: Any, valid: tuple[str, ...], where: str) -> str:
    last = str(key).rsplit(".", 1)[-1]
    close = difflib.get_close_matches(last, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}: unknown key in {where}{hint}; valid keys: {', '.join(valid)}"


def _parse_section(settings_class, mapping: Any, key: str, problems: list[str]):
    """Build one settings section, appending each problem to ``problems``."""
    fields = {setting.name: setting for setting in dataclasses.fields(settings_class)}
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        problems.append(f"{key}: expected a mapping, got {type(mapping).__name__} {mapping!r}")
        mapping = {}
    values = {}
    complete = True
    for name, value in mapping.items():
        if name not in fields:
            problems.append(_unknown_key(f"{key}.{name}", tuple(fields), key))
            continue
        value, problem = _coerce_setting(fields[name], value)
        if problem:
            problems.append(f"{key}.{name}: {problem}")
            complete = False
            continue
        values[name] = value
    for name, setting in fields.items():
        if name not in mapping and setting.default is dataclasses.MISSING:
            problems.append(f"{key}.{name}: missing; this setting is required")
            complete = False
    return settings_class(**values) if complete else None


def _coerce_setting(setting: dataclasses.Field, value: Any) -> tuple[Any, str | None]:
    """Return ``value`` converted to the setting's type, or a problem text."""
    kind = setting.metadata["kind"]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    numeric = int in kinds or float in kinds
    if isinstance(value, str) and numeric and str not in kinds:
        # YAML 1.1 reads 1e-4 (no dot) as text.
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float) and int in kinds and float not in kinds and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, kinds):
        return value, f"expected {_kind_text(kinds)}, got {type(value).__name__} {value!r}"
    check = setting.metadata["check"]
    if check is not None and value is not None:
        problem = check(value)
        if problem:
            return value, f"{value!r} {problem}"
    return value, None


def _kind_text(kinds: tuple[type, ...]) -> str:
    words = {
        int: "an integer",
        float: "a number",
        str: "text",
        dict: "a mapping",
        list: "a list",
        type(None): "null",
    }
    texts = []
    for kind in kinds:
        if words[kind] not in texts:
            texts.append(words[kind])
    return " or ".join(texts)


class _StudyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads exponent numbers without a dot, such as 1e-3, as floats.

    PyYAML follows YAML 1.1, which reads 1e-3 as text; YAML 1.2 and JSON read it as a number.
    """


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_study(path: str | Path) -> Study:
    """Read and validate a study file (YAML, read with a ``yaml.SafeLoader`` subclass)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {str(path)!r} not found; give the path of a .yaml study file")
    try:
        # _StudyLoader builds only plain data, as yaml.safe_load does. Reading from the open
        # file makes YAML's error messages name it.
        with path.open(encoding="utf-8") as file:
            mapping = yaml.load(file, Loader=_StudyLoader)  # noqa: S506
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: invalid YAML: {error}") from None
    return Study.from_dict(mapping, source=path.resolve())
