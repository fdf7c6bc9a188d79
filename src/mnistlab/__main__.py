"""Allow ``python -m mnistlab``."""

from mnistlab.cli import main

if __name__ == "__main__":  # not when ``run all --jobs`` workers re-import the main module
    raise SystemExit(main())
