"""Factories for the wine_mlp study: scikit-learn's bundled wine data and an MLP classifier.

ftsearch imports this module by the study's ``data.factory`` and ``model.factory`` paths
(``tabular:load_wine``, ``tabular:build_mlp``) because it sits beside the study file.
"""

from sklearn.datasets import load_wine as load_wine_data
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
NORMS = {"none": None, "batch": nn.BatchNorm1d, "layer": nn.LayerNorm}


def load_wine(settings):
    """Return the 178 wine samples (13 features, 3 classes) split and standardized.

    The scaler is fitted on the training split only, so validation and test stay unseen.
    """
    wine = load_wine_data()
    x, y = wine.data, wine.target
    rest_x, test_x, rest_y, test_y = train_test_split(
        x, y, test_size=settings.test_fraction, stratify=y, random_state=settings.seed
    )
    val_share = settings.val_fraction / (1.0 - settings.test_fraction)
    train_x, val_x, train_y, val_y = train_test_split(
        rest_x, rest_y, test_size=val_share, stratify=rest_y, random_state=settings.seed
    )
    scaler = StandardScaler().fit(train_x)
    return {
        "train": (scaler.transform(train_x), train_y),
        "val": (scaler.transform(val_x), val_y),
        "test": (scaler.transform(test_x), test_y),
        "classes": list(wine.target_names),
    }


def build_mlp(data, depth=2, width=64, activation="relu", norm="none", dropout=0.0):
    """Return an MLP of ``depth`` hidden layers: Linear, norm, activation, dropout each."""
    layers = []
    features = data.input_shape[0]
    for _ in range(depth):
        layers.append(nn.Linear(features, width))
        if NORMS[norm] is not None:
            layers.append(NORMS[norm](width))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = width
    layers.append(nn.Linear(features, data.num_classes))
    return nn.Sequential(*layers)
