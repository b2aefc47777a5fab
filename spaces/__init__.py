"""ftsearch's search-space vocabulary: parameter kinds, search terms and replaceable modules."""

from spaces.params import (
    Categorical,
    Conditional,
    Fixed,
    FloatRange,
    IntRange,
    Param,
    Space,
    SpaceError,
    parse_param,
    parse_space,
)
from spaces.terms import TERMS, Term, check_space, resolve_config

__all__ = [
    "TERMS",
    "Categorical",
    "Conditional",
    "Fixed",
    "FloatRange",
    "IntRange",
    "Param",
    "Space",
    "SpaceError",
    "Term",
    "check_space",
    "parse_param",
    "parse_space",
    "resolve_config",
]
