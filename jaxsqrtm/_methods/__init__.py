"""The method table: one module per method, each defining ``METHOD`` (a ``_core.Method``).

The order is that of :data:`jaxsqrtm.METHODS`; the first entry is the default.
"""

from jaxsqrtm._methods import accurate, eigh, newton_schulz, pade, taylor

TABLE = {
    entry.name: entry
    for entry in (accurate.METHOD, pade.METHOD, taylor.METHOD, newton_schulz.METHOD, eigh.METHOD)
}
