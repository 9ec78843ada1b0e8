"""The method table: one module per method, each defining ``METHOD`` (a ``_core.Method``).

The order is that of :data:`jaxsqrtm.METHODS`; the first entry is the default.
:data:`POLAR_TABLE` is the polar factor's table (:mod:`jaxsqrtm._methods.polar`), in the
order of :data:`jaxsqrtm.POLAR_METHODS`. :data:`POWER_TABLE` is that of the fractional
powers ``A^(+-1/p)`` (:mod:`jaxsqrtm._methods.fractional_power`), in the order of
:data:`jaxsqrtm.POWER_METHODS`.
"""

from jaxsqrtm._methods import (
    accurate,
    eigh,
    fractional_power,
    newton_schulz,
    pade,
    polar,
    taylor,
)

TABLE = {
    entry.name: entry
    for entry in (accurate.METHOD, pade.METHOD, taylor.METHOD, newton_schulz.METHOD, eigh.METHOD)
}

POLAR_TABLE = {entry.name: entry for entry in polar.METHODS}

POWER_TABLE = {entry.name: entry for entry in fractional_power.METHODS}
