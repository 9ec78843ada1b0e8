"""``python -m jaxsqrtm.bench``."""

from jaxsqrtm.bench.cli import main

raise SystemExit(main())
