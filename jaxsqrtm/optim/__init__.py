"""Optax optimisers built on jaxsqrtm's matrix functions (needs the ``linen`` extra: optax).

Not imported by ``import jaxsqrtm``; ``import jaxsqrtm.optim`` needs optax.
"""
