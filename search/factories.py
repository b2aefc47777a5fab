"""Models and data sets from Python callables, in place of a timm model and a built-in source.

A study names each callable by its import path, ``"package.module:function"``, or by its
module's file, ``"path/to/module.py:function"`` (relative to the study file's folder). A module
in the study file's folder is importable too, so ``tabular:build_mlp`` finds ``build_mlp`` in
``tabular.py`` beside the study file.

``model.factory`` is called once per trial as ``factory(data, **params)`` and returns a
``torch.nn.Module``:

* ``data`` is a :class:`DataInfo`: the class names, the shape of one input sample and the kind
  of input (``"image"`` or ``"features"``).
* ``params`` are the trial's values of ``space.factory_params``. Parameters the space leaves
  out take the defaults of the factory's signature.
* The module maps a float32 batch of shape (N, *data.input_shape) to logits (N, num_classes).

``data.factory`` is called once per study, in the driver, as ``factory(settings)`` with the
study's ``DataSettings`` (``val_fraction``, ``test_fraction``, ``seed``). It returns either

* a mapping ``{"train": (x, y), "val": (x, y), "test": (x, y), "classes": [...]}``, where
  ``test`` and ``classes`` are optional; or
* a whole set ``(x, y)``, or ``{"x": x, "y": y, "classes": [...]}``, which is split into
  train, validation and test with the study's fractions and seed, stratified by class.

``x`` is a NumPy array, a torch tensor or anything ``numpy.asarray`` takes, with one row per
sample. uint8 arrays of shape (N, C, H, W) are images: the trainable scales them by 1/255 and
normalizes them with ``model.mean`` and ``model.std``. Any other numeric array is a feature
array: it is stored as float32 and reaches the model unchanged. ``y`` contains integer class
indices from 0. The arrays go to every trial through Ray's object store, so the data is
loaded and converted once per study.

Both callables are imported and checked before any trial starts: the data factory runs, and the
model factory builds one model from a sampled configuration and runs it forward on two
training samples.

Example::

    def build_mlp(data, depth=2, width=64):
        layers, features = [], data.input_shape[0]
        for _ in range(depth):
            layers += [torch.nn.Linear(features, width), torch.nn.ReLU()]
            features = width
        return torch.nn.Sequential(*layers, torch.nn.Linear(features, data.num_classes))
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spaces.params import Space, SpaceError, SubSpace, parse_space

logger = logging.getLogger(__name__)

__all__ = [
    "FACTORY_PARAMS",
    "DataInfo",
    "build_factory_model",
    "check_factory_study",
    "describe_data",
    "drop_timm_only_terms",
    "load_factory",
    "load_factory_dataset",
    "load_factory_trial_model",
    "parse_study_space",
    "prepare_factory_model",
    "timm_only_terms",
    "without_factory_params",
]

# The space key whose members go to the model factory as keyword arguments.
FACTORY_PARAMS = "factory_params"
# Term targets that only a timm model built by search.model consumes.
TIMM_TARGETS = ("model", "backbone")
PATH_PATTERN = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
# A module given by its file, as a resolved study writes a module found beside the study file.
FILE_PATH_PATTERN = re.compile(r"^[^:]+/[A-Za-z_]\w*\.py:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
SPLITS = ("train", "val", "test")
CHECK_BATCH = 2


@dataclass(frozen=True)
class DataInfo:
    """The data description a model factory receives: class names, sample shape, input kind."""

    classes: tuple[str, ...]
    input_shape: tuple[int, ...]
    kind: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def describe_data(dataset) -> DataInfo:
    """Return the :class:`DataInfo` of a ``search.data.Dataset``."""
    return DataInfo(tuple(dataset.classes), tuple(dataset.train_x.shape[1:]), dataset.kind)


# The study: its space and the checks that need no import.


def parse_study_space(spec: Any, key: str = "space") -> Space:
    """Parse a study's space; the ``factory_params`` mapping becomes one :class:`SubSpace`."""
    if not isinstance(spec, Mapping) or FACTORY_PARAMS not in spec:
        return parse_space(spec, key)
    nested_spec = spec[FACTORY_PARAMS]
    nested_key = f"{key}.{FACTORY_PARAMS}"
    if not isinstance(nested_spec, Mapping):
        raise SpaceError(
            f"{nested_key}: expected a mapping of the model factory's parameter names to specs, "
            f"got {type(nested_spec).__name__} {nested_spec!r}; write for example "
            "factory_params: {depth: {type: int, low: 1, high: 4}}"
        )
    nested = parse_space(nested_spec, nested_key)
    rest = parse_space({name: value for name, value in spec.items() if name != FACTORY_PARAMS}, key)
    params = {}
    for name in spec:
        params[name] = SubSpace(nested) if name == FACTORY_PARAMS else rest[name]
    return Space(params)


def without_factory_params(space: Space) -> Space:
    """Return ``space`` without ``factory_params``, whose members no term registry covers."""
    return Space({name: param for name, param in space.params.items() if name != FACTORY_PARAMS})


def timm_only_terms() -> list[str]:
    """Return the search terms that only a timm model takes (those search.model consumes)."""
    from spaces.terms import TERMS

    return [name for name, term in TERMS.items() if term.target in TIMM_TARGETS]


def check_factory_study(mapping: Mapping, sections: dict[str, Any], space: Space) -> list[str]:
    """Return the problems of the study's factory settings that need no import."""
    problems = []
    model, data = sections.get("model"), sections.get("data")
    raw_data = mapping.get("data") if isinstance(mapping.get("data"), Mapping) else {}
    if model is not None:
        problems += _check_model_settings(model, space)
        problems += _check_cost_objectives(model, mapping.get("objective"))
    if data is not None and data.factory is not None:
        problems += _check_path(data.factory, "data.factory", "load_wine")
    # A resolved study file repeats the default source beside the factory, so only another
    # source conflicts with it.
    from search.study import DataSettings

    source = raw_data.get("source", _field_default(DataSettings, "source"))
    if raw_data.get("factory") is not None and source != _field_default(DataSettings, "source"):
        problems.append(
            f"data: both data.source {source!r} and data.factory {raw_data['factory']!r} are "
            "given; keep one of them"
        )
    return problems


def _check_cost_objectives(model, objective) -> list[str]:
    """Reject cost objectives for a factory model: ftsearch measures them on timm models only."""
    from search.objectives import COST_METRICS

    if model.factory is None or not isinstance(objective, Mapping):
        return []
    metrics = objective.get("metrics")
    if not isinstance(metrics, list):
        return []
    problems = []
    for index, entry in enumerate(metrics):
        metric = entry.get("metric") if isinstance(entry, Mapping) else None
        if metric in COST_METRICS:
            problems.append(
                f"objective.metrics[{index}].metric: the cost metric {metric!r} is measured on timm "
                "models only, not on model.factory; remove it, or report the cost from your own code"
            )
    return problems


def _check_model_settings(model, space: Space) -> list[str]:
    if model.factory is None:
        if model.name is None:
            return [
                "model.name: missing; give a timm model name, or model.factory: "
                "'package.module:function' for a model of your own"
            ]
        if FACTORY_PARAMS in space:
            return [
                f"space.{FACTORY_PARAMS}: only a model factory receives these parameters, but "
                f"the model is the timm model {model.name!r}; set model.factory or remove "
                f"space.{FACTORY_PARAMS}"
            ]
        return []
    problems = _check_path(model.factory, "model.factory", "build_mlp")
    if model.name is not None:
        problems.append(
            f"model: both model.name {model.name!r} and model.factory {model.factory!r} are "
            "given; keep model.name for a timm model or model.factory for your own"
        )
    if model.pretrained not in (None, "none"):
        problems.append(
            f"model.pretrained: {model.pretrained!r} applies only to timm models; a model "
            "factory loads its own weights, so remove model.pretrained"
        )
    for name in space:
        if name in timm_only_terms():
            problems.append(
                f"space.{name}: the term {name!r} applies only to timm models (model.name), "
                f"not to model.factory; remove it, or search it under space.{FACTORY_PARAMS} "
                "and use it in the factory"
            )
    return problems


def _check_path(path: str, key: str, example: str) -> list[str]:
    if PATH_PATTERN.match(path) or FILE_PATH_PATTERN.match(path):
        return []
    return [
        f"{key}: invalid value {path!r}; write 'package.module:function', such as "
        f"'tabular:{example}' for the function {example} in tabular.py beside the study file"
    ]


def _field_default(settings_class, name: str) -> Any:
    for setting in dataclasses.fields(settings_class):
        if setting.name == name:
            return setting.default
    return None


def resolve_factory_file(path: str | None, source: Path | None) -> str | None:
    """Return ``path`` with a module found beside the study file named by its absolute file.

    A run directory's study.yaml and an exported best study sit in other folders, so
    "tabular:build_mlp" from ``studies/`` becomes "/abs/studies/tabular.py:build_mlp" there.
    Dotted modules and modules found elsewhere on the Python path stay as they are.
    """
    if path is None or source is None or not PATH_PATTERN.match(path):
        return path
    module_name, _, attribute_path = path.partition(":")
    module_file = Path(source).resolve().parent / f"{module_name}.py"
    if "." in module_name or not module_file.is_file():
        return path
    return f"{module_file}:{attribute_path}"


def drop_timm_only_terms(study, config: dict[str, Any]) -> dict[str, Any]:
    """Return a trial configuration without the timm-only terms when the model is a factory's.

    Those terms hold their defaults there, which would read as if the model used them.
    """
    if study.model.factory is None:
        return config
    timm_terms = timm_only_terms()
    return {name: value for name, value in config.items() if name not in timm_terms}


# Importing a callable.


def load_factory(path: str, key: str, study) -> Callable:
    """Import the callable ``path`` ("package.module:function") named by the study's ``key``.

    The study file's folder (the current folder for a study without a file) is appended to
    ``sys.path``. Modules imported from that folder are registered with Ray's cloudpickle to be
    pickled by value, so Ray workers that cannot import them still receive the callable.

    Raises:
        StudyError: the module or the function is missing, or the object is not callable.
    """
    from search.study import StudyError

    module_name, _, attribute_path = path.rpartition(":")
    folder = study_folder(study)
    if module_name.endswith(".py"):
        module_file = folder / module_name
        folder, module_name = module_file.parent, module_file.stem
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    importlib.invalidate_caches()
    before = set(sys.modules)
    module = _import_module(module_name, key, folder)
    target: Any = module
    for depth, attribute in enumerate(attribute_path.split(".")):
        if not hasattr(target, attribute):
            owner = module_name if depth == 0 else f"{module_name}:{'.'.join(attribute_path.split('.')[:depth])}"
            raise StudyError(_missing_attribute(key, owner, target, attribute))
        target = getattr(target, attribute)
    if not callable(target):
        raise StudyError(
            f"{key}: {path} is not callable (it is the {type(target).__name__} {target!r}); "
            "name a function or a class that returns what the factory contract expects"
        )
    _register_by_value(folder, set(sys.modules) - before | {module_name})
    return target


def study_folder(study) -> Path:
    """Return the folder that factory modules beside the study file are imported from."""
    if study.source is not None:
        return Path(study.source).resolve().parent
    return Path.cwd()


def _import_module(module_name: str, key: str, folder: Path):
    from search.study import StudyError

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (module_name + ".").startswith(error.name + "."):
            file_name = module_name.replace(".", "/") + ".py"
            raise StudyError(
                f"{key}: module {module_name!r} not found in the study file's folder {folder} "
                f"or on the Python path; put {file_name} beside the study file, add its folder "
                "to PYTHONPATH, or install its package"
            ) from None
        raise StudyError(
            f"{key}: importing module {module_name!r} failed because it imports a missing "
            f"module ({error}); install that package"
        ) from None
    except Exception as error:  # noqa: BLE001 - the user's module may raise anything on import
        raise StudyError(
            f"{key}: importing module {module_name!r} failed: {type(error).__name__}: {error}"
        ) from None


def _missing_attribute(key: str, owner: str, target: Any, attribute: str) -> str:
    own = getattr(target, "__name__", None) if inspect.ismodule(target) else None
    names = sorted(
        name
        for name, value in vars(target).items()
        if not name.startswith("_")
        and callable(value)
        and not inspect.ismodule(value)
        # Of a module, list what it defines, not what it imported (StandardScaler, ...).
        and (own is None or getattr(value, "__module__", own) == own)
    )
    close = difflib.get_close_matches(attribute, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = getattr(target, "__file__", None)
    location = f" ({where})" if where else ""
    return (
        f"{key}: {owner}{location} has no function {attribute!r}{hint}; "
        f"its functions: {', '.join(names) or 'none'}"
    )


def _register_by_value(folder: Path, names: set[str]) -> None:
    """Let Ray pickle the modules in ``names`` that live under ``folder`` by value."""
    local = []
    for name in sorted(names):
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder):
            local.append(module)
    if not local:
        return
    import ray.cloudpickle

    for module in local:
        ray.cloudpickle.register_pickle_by_value(module)
    logger.debug("Ray pickles these modules by value: %s", ", ".join(m.__name__ for m in local))


# Data from a data factory.


def load_factory_dataset(study, factory: Callable | None = None):
    """Call the study's data factory and return its splits as a ``search.data.Dataset``.

    Raises:
        StudyError: the factory raised or returned something the contract does not allow.
    """
    from search.data import Dataset, _resize, _split, _to_channels
    from search.study import StudyError

    key, path = "data.factory", study.data.factory
    factory = factory or load_factory(path, key, study)
    try:
        result = factory(study.data)
    except Exception as error:  # noqa: BLE001 - the user's factory may raise anything
        raise StudyError(f"{key}: {path} raised {type(error).__name__}: {error}") from None
    splits, classes = _read_result(result, key, path)
    if "x" in splits:
        x, y = splits.pop("x")
        classes = _class_names(classes, [y], key)
        try:
            whole = _split(x, y, classes, study.data.val_fraction, study.data.test_fraction, study.data.seed)
        except ValueError as error:
            raise StudyError(f"{key}: splitting the data of {path} failed: {error}") from None
        splits = {"train": (whole.train_x, whole.train_y), "val": (whole.val_x, whole.val_y), "test": (whole.test_x, whole.test_y)}
    else:
        classes = _class_names(classes, [y for _, y in splits.values()], key)
    kind = _check_splits(splits, key)
    if study.model.factory is None:
        if kind != "image":
            raise StudyError(
                f"{key}: {path} returned {kind} of shape {splits['train'][0].shape[1:]}, but the "
                f"timm model {study.model.name!r} takes uint8 images (N, C, H, W); return images, "
                "or use model.factory for a model that takes these features"
            )
        size, channels = study.model.image_size, study.model.in_chans
        try:
            splits = {name: (_resize(_to_channels(x, channels), size), y) for name, (x, y) in splits.items()}
        except ValueError as error:
            raise StudyError(f"{key}: {error}; return 1- or {channels}-channel images") from None
    dataset = Dataset(
        classes,
        *(array for name in SPLITS for array in splits[name]),
        kind=kind,
    )
    logger.info("Loaded %s: %s", path, dataset.describe())
    return dataset


def _read_result(result: Any, key: str, path: str) -> tuple[dict[str, tuple], Any]:
    """Return the splits (or the whole set under "x") and the class names of a factory result."""
    from search.study import StudyError

    expected = (
        "expected a mapping {'train': (x, y), 'val': (x, y), 'test': (x, y), 'classes': [...]} "
        "(test and classes optional) or a whole set (x, y)"
    )
    if isinstance(result, tuple) and len(result) == 2:
        return {"x": _pair(result, key, "the whole set")}, None
    if not isinstance(result, Mapping):
        raise StudyError(f"{key}: {path} returned {type(result).__name__}; {expected}")
    unknown = sorted(str(name) for name in result if name not in (*SPLITS, "x", "y", "classes"))
    if unknown:
        raise StudyError(f"{key}: {path} returned the unknown keys {unknown}; {expected}")
    classes = result.get("classes")
    if "x" in result or "y" in result:
        return {"x": _pair((result.get("x"), result.get("y")), key, "x and y")}, classes
    missing = [name for name in ("train", "val") if name not in result]
    if missing:
        raise StudyError(f"{key}: {path} returned no {' or '.join(missing)} split; {expected}")
    splits = {name: _pair(result[name], f"{key}", f"the {name} split") for name in SPLITS if name in result}
    if "test" not in splits:
        x, y = splits["train"]
        splits["test"] = (x[:0], y[:0])
    return splits, classes


def _pair(value: Any, key: str, part: str) -> tuple[np.ndarray, np.ndarray]:
    from search.study import StudyError

    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise StudyError(f"{key}: {part} is {type(value).__name__}; expected a pair (x, y) of samples and labels")
    x, y = (_as_array(item, key, f"{part} {name}") for item, name in zip(value, "xy"))
    if x.ndim < 2:
        raise StudyError(
            f"{key}: {part} x has shape {x.shape}; expected one row per sample, such as (N, F) "
            "features (reshape one feature with x[:, None])"
        )
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or len(y) == 0):
        raise StudyError(
            f"{key}: {part} y has shape {y.shape} and dtype {y.dtype}; expected one integer class "
            "index per sample, shape (N,)"
        )
    if len(x) != len(y):
        raise StudyError(f"{key}: {part} has {len(x)} samples but {len(y)} labels; give one label per sample")
    return x, y.astype(np.int64)


def _as_array(value: Any, key: str, part: str) -> np.ndarray:
    from search.study import StudyError

    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise StudyError(f"{key}: {part} is not an array ({error}); return a NumPy array or a tensor") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise StudyError(f"{key}: {part} has dtype {array.dtype}; expected numbers")
    return array


def _class_names(classes: Any, labels: list[np.ndarray], key: str) -> tuple[str, ...]:
    from search.study import StudyError

    present = [y for y in labels if len(y)]
    low = min(int(y.min()) for y in present)
    high = max(int(y.max()) for y in present)
    if low < 0:
        raise StudyError(f"{key}: a label is {low}; labels are class indices from 0")
    if classes is None:
        return tuple(str(index) for index in range(high + 1))
    names = tuple(str(name) for name in classes)
    if high >= len(names):
        raise StudyError(
            f"{key}: a label is {high} but only {len(names)} classes are named; give one name per class"
        )
    return names


def _check_splits(splits: dict[str, tuple], key: str) -> str:
    """Convert each split's samples to the stored dtype in place and return the input kind."""
    from search.study import StudyError

    shape = splits["train"][0].shape[1:]
    for name in ("train", "val"):
        if len(splits[name][1]) == 0:
            raise StudyError(f"{key}: the {name} split is empty; give it at least one sample")
    for name, (x, _) in splits.items():
        if x.shape[1:] != shape and len(x):
            raise StudyError(
                f"{key}: the {name} samples have shape {x.shape[1:]} but the train samples "
                f"{shape}; give every split the same sample shape"
            )
    images = [x.dtype == np.uint8 and x.ndim == 4 for x, _ in splits.values()]
    if all(images):
        return "image"
    for name, (x, y) in list(splits.items()):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise StudyError(f"{key}: the {name} samples contain NaN or infinite values; clean or impute them")
        splits[name] = (x, y)
    return "features"


# Models from a model factory.


def build_factory_model(factory: Callable, config: Mapping[str, Any], dataset):
    """Build a trial's model: ``factory(data, **config["factory_params"])``."""
    import torch

    params = dict(config.get(FACTORY_PARAMS) or {})
    model = factory(describe_data(dataset), **params)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"the model factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_factory_trial_model(run_dir, study, trial, prepared):
    """Rebuild a trial's factory model from its configuration and load its last checkpoint.

    ``prepared`` is what ``search.preflight.prepare`` returns for ``study``: the model factory
    and the data set whose description the factory receives.
    """
    import torch

    from search.checkpoints import TrialModel, find_checkpoint
    from search.storage import trial_config

    config = trial_config(trial)
    state = torch.load(find_checkpoint(run_dir, trial), map_location="cpu", weights_only=True)
    model = build_factory_model(prepared.model_factory, config, prepared.dataset)
    model.load_state_dict(state["model"])
    model.eval()
    mean, std = prepared.normalization[study.model.factory]
    return TrialModel(model, config, study.model.factory, int(state["epoch"]), mean, std)


def prepare_factory_model(study, load_data: bool = True):
    """Import and check the model factory, load the data, and return what the trials share.

    Raises:
        StudyError: listing the problems found.
    """
    from search.preflight import Prepared

    factory = load_factory(study.model.factory, "model.factory", study)
    _check_signature(factory, study)
    if not load_data:
        return Prepared(None, {}, {study.model.factory: _normalization(study, study.model.in_chans)}, factory)
    if study.data.factory is not None:
        dataset = load_factory_dataset(study)
    else:
        from search.data import load_dataset

        dataset = load_dataset(study.data, study.model.image_size, study.model.in_chans)
    channels = dataset.train_x.shape[1] if dataset.kind == "image" else study.model.in_chans
    normalization = {study.model.factory: _normalization(study, channels)}
    _check_built_model(factory, study, dataset, normalization[study.model.factory])
    from search.preflight import check_batch_fits

    check_batch_fits(study, dataset)
    return Prepared(dataset, {}, normalization, factory)


def _check_signature(factory: Callable, study) -> None:
    """Check that ``factory(data, **factory_params)`` binds, naming any unknown parameter."""
    from search.study import StudyError

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return  # Some builtins have no signature; calling the factory checks them instead.
    names = list(study.space[FACTORY_PARAMS].space) if FACTORY_PARAMS in study.space else []
    params = signature.parameters
    takes_any = any(param.kind is inspect.Parameter.VAR_KEYWORD for param in params.values())
    keywords = [
        name
        for name, param in list(params.items())[1:]
        if param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    problems = []
    for name in names:
        if not takes_any and name not in keywords:
            close = difflib.get_close_matches(name, keywords, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"space.{FACTORY_PARAMS}.{name}: {study.model.factory} takes no parameter "
                f"{name!r}{hint}; its parameters: {', '.join(keywords) or 'none'}"
            )
    if problems:
        raise StudyError(problems)
    try:
        signature.bind(None, **{name: None for name in names})
    except TypeError as error:
        raise StudyError(
            f"model.factory: {study.model.factory} cannot be called as factory(data, "
            f"**{FACTORY_PARAMS}): {error}; give that parameter a default or add it to "
            f"space.{FACTORY_PARAMS}"
        ) from None


def _sample_params(study) -> dict[str, Any]:
    """Return one configuration of ``factory_params``, sampled at random with the study's seed."""
    if FACTORY_PARAMS not in study.space:
        return {}
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sampler = optuna.samplers.RandomSampler(seed=study.search.seed)
        trial = optuna.create_study(sampler=sampler).ask()
    finally:
        optuna.logging.set_verbosity(verbosity)
    return study.space[FACTORY_PARAMS].suggest(trial, FACTORY_PARAMS)


def _check_built_model(factory: Callable, study, dataset, normalization) -> None:
    """Build one model and run forward and backward on two training samples."""
    import torch

    from search.study import StudyError

    key, path = "model.factory", study.model.factory
    params = _sample_params(study)
    info = describe_data(dataset)
    try:
        model = factory(info, **params)
    except Exception as error:  # noqa: BLE001 - the user's factory may raise anything
        raise StudyError(f"{key}: {path}(data, **{params!r}) raised {type(error).__name__}: {error}") from None
    if not isinstance(model, torch.nn.Module):
        raise StudyError(
            f"{key}: {path} returned {type(model).__name__}; expected a torch.nn.Module that maps "
            f"inputs (N, {', '.join(map(str, info.input_shape))}) to logits (N, {info.num_classes})"
        )
    if not any(param.requires_grad for param in model.parameters()):
        raise StudyError(f"{key}: the model of {path} has no trainable parameters; return a model with some")
    x = torch.from_numpy(dataset.train_x[:CHECK_BATCH]).float()
    if dataset.kind == "image":
        mean, std = (torch.tensor(values).view(1, -1, 1, 1) for values in normalization)
        x = (x / 255.0 - mean) / std
    try:
        model.train()
        logits = model(x)
        logits.sum().backward()
    except Exception as error:  # noqa: BLE001 - the user's model may raise anything
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise StudyError(
            f"{key}: the model of {path} failed on {len(x)} training samples of shape "
            f"{tuple(x.shape)}: {type(error).__name__}: {first_line}; make it take inputs of "
            f"shape (N, {', '.join(map(str, info.input_shape))})"
        ) from None
    expected = (len(x), info.num_classes)
    if tuple(logits.shape) != expected:
        raise StudyError(
            f"{key}: the model of {path} returned logits of shape {tuple(logits.shape)} for "
            f"{len(x)} samples; expected {expected}, one logit per class (data.num_classes)"
        )


def _normalization(study, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the image mean and std: the study's, or ImageNet's, one value per channel."""
    from search.preflight import IMAGENET_MEAN, IMAGENET_STD

    mean = tuple(study.model.mean) if study.model.mean is not None else IMAGENET_MEAN
    std = tuple(study.model.std) if study.model.std is not None else IMAGENET_STD
    if len(mean) != channels:
        mean = (sum(mean) / len(mean),) * channels
    if len(std) != channels:
        std = (sum(std) / len(std),) * channels
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
