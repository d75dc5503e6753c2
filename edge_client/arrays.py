"""The array type fedge annotates with: a numpy array of any shape and dtype."""

from typing import Any

from numpy.typing import NDArray

Array = NDArray[Any]
