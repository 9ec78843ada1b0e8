"""``python -m jaxsqrtm``: each method's error and time on real covariance matrices.

Two real 64 x 64 covariances (needs the ``demo`` extra: scikit-learn, scikit-image):
the pixel covariance of scikit-learn's digits (rank 61: a rank-deficient root) and
the covariance of 8 x 8 grey patches of scikit-image's astronaut (full rank,
condition number 4e4). For each method, ``sqrtm`` and ``inv_sqrtm`` in float32 are
compared with a float64 ``eigh`` reference (forward and gradient for a fixed random
cotangent) and timed (median of interleaved repeats, compile time excluded).
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm.bench import timing


def _matrices():
    digits = testing.digits_covariance()
    patches = testing.image_patch_covariance("astronaut")
    return {
        "digits pixels (rank 61, no gradient)": (digits, True, (jaxsqrtm.sqrtm,)),
        "astronaut patches": (patches, False, (jaxsqrtm.sqrtm, jaxsqrtm.inv_sqrtm)),
    }


def _errors(root, method, a32, cotangent, singular):
    """Forward and gradient errors; a singular matrix has no gradient (it is infinite)."""
    inverse = root is jaxsqrtm.inv_sqrtm
    out, vjp = jax.vjp(lambda x: root(x, method=method), jnp.asarray(a32))
    forward = testing.relative_error(out, testing.sqrtm_reference(a32, inverse=inverse))
    if singular:
        return forward, float("nan")
    (grad,) = vjp(jnp.asarray(cotangent))
    reference = testing.sqrtm_vjp_reference(a32, cotangent, inverse=inverse)
    return forward, testing.relative_error(grad, reference)


def _timings(root, method, a32, cotangent, repeats):
    a = jnp.asarray(a32)
    g = jnp.asarray(cotangent)

    def forward(x):
        return root(x, method=method)

    def forward_backward(x, g):
        return jax.vjp(forward, x)[1](g)[0]

    cases = [timing.compile_timed(forward, (a,)), timing.compile_timed(forward_backward, (a, g))]
    for case in cases:
        timing.warm_up(case, calls=2, min_sample_s=0.01)
    timing.measure_interleaved(cases, repeats=repeats, min_repeats=3, max_case_s=1.0)
    return [timing.statistics(case)["median_s"] for case in cases]


def report(repeats: int = 7) -> str:
    """The text printed by ``python -m jaxsqrtm``."""
    device = jax.devices()[0]
    lines = [
        f"jaxsqrtm {jaxsqrtm.__version__}, jax {jax.__version__}, "
        f"{device.platform} ({device.device_kind}); float32 inputs, float64 eigh reference",
        "errors: relative Frobenius, forward and gradient (random cotangent); "
        "times: median, compile excluded",
    ]
    rng = np.random.default_rng(0)
    for name, (a, singular, roots) in _matrices().items():
        w = np.linalg.eigvalsh(a)
        a32 = a.astype(np.float32)
        cotangent = rng.standard_normal(a.shape).astype(np.float32)
        lines.append("")
        lines.append(
            f"{name}: {a.shape[0]}x{a.shape[1]}, eigenvalues {max(w[0], 0):.1e} .. {w[-1]:.1e}"
        )
        header = f"  {'function':10} {'method':6} {'fwd err':>9} {'grad err':>9}"
        lines.append(header + f" {'fwd ms':>8} {'fwd+bwd ms':>11}")
        for root in roots:
            for method in jaxsqrtm.METHODS:
                forward, backward = _errors(root, method, a32, cotangent, singular)
                t_fwd, t_both = _timings(root, method, a32, cotangent, repeats)
                grad_text = "-" if np.isnan(backward) else f"{backward:.1e}"
                lines.append(
                    f"  {root.__name__:10} {method:6} {forward:9.1e} {grad_text:>9}"
                    f" {1e3 * t_fwd:8.3f} {1e3 * t_both:11.3f}"
                )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxsqrtm", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case")
    args = parser.parse_args(argv)
    print(report(args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
