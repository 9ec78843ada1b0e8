"""Test configuration: float64 is enabled so that float64 inputs stay float64.

Float32 inputs must stay float32 under x64 too (DESIGN §4.4), which these tests check.
"""

import jax

jax.config.update("jax_enable_x64", True)
