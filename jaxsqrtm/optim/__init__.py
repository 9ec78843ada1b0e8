"""Optax optimisers built on jaxsqrtm's matrix functions (needs the ``linen`` extra: optax).

Not imported by ``import jaxsqrtm``; ``import jaxsqrtm.optim`` needs optax.
"""

from jaxsqrtm.optim._muon import (
    MuonDimensionNumbers,
    MuonState,
    muon,
    orthogonalize,
    scale_by_muon,
)
from jaxsqrtm.optim._shampoo import (
    ShampooLayout,
    ShampooState,
    scale_by_shampoo,
    shampoo,
    shampoo_layout,
)

__all__ = [
    "MuonDimensionNumbers",
    "MuonState",
    "ShampooLayout",
    "ShampooState",
    "muon",
    "orthogonalize",
    "scale_by_muon",
    "scale_by_shampoo",
    "shampoo",
    "shampoo_layout",
]
