"""Public names of ``lightning_reg.find``: read by lazy_loader, editors and type checkers."""

from .result import FinderResult as FinderResult
from .search import find_regularization as find_regularization
from .space import Candidate as Candidate
from .space import SearchSpace as SearchSpace

__all__ = [
    "Candidate",
    "FinderResult",
    "SearchSpace",
    "find_regularization",
]
