"""Small end-to-end examples of the Flax layers in :mod:`jaxsqrtm.linen`.

Submodules import Flax, optax and scikit-learn; nothing is imported here, so that
``import jaxsqrtm.examples`` stays cheap.
"""
