"""One module per study: a config dataclass and ``run(config, out_dir)``."""
