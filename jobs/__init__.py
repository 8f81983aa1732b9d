"""Things that run: simulate samples, preprocess ROOT files into shards, train one configuration.

Submodules import their engines (uproot, dask, torch, horovod) only when used.
"""

from models.errors import ConfigError, HepscanError, InputError, OutputError

__all__ = ["ConfigError", "HepscanError", "InputError", "OutputError"]
