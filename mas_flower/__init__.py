"""mas-flower: federated multiple-task learning with MAS (Merge And Split).

Flower is imported only in `mas_flower.strategy` (the Flower-facing layer: the strategies, the message
contract `strategy.protocol` and `strategy.wire`) and `mas_flower.tools` (the operator tools that drive
`flwr`). Everything else, the library core (tasks, data, models, losses, training, the affinity, the
group searches, the methods, the settings), is plain PyTorch. `client_app/` and `server_app/` are the
thin Flower apps on top of both, and this package never imports them (docs/layout.md;
tests/test_package.py checks both rules).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mas-flower")  # pyproject.toml's [project] version, the only place it is written
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
