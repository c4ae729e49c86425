"""Two lines that Lightning and torch print on every run and that say nothing about it: Lightning's tip to install
litlogger, and torch's deprecation of LeafSpec, which Lightning's own code triggers. Each is dropped by its exact
text; every other log line and warning still shows."""

from __future__ import annotations

import logging
import warnings

TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
LEAFSPEC = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# the loggers Lightning's rank-zero messages go through (the last of the two imported emits)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TIP)


def quiet() -> None:
    """Installs both filters (once, however often it is called)."""
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTip) for f in logger.filters):
            logger.addFilter(DropTip())
    warnings.filterwarnings("ignore", message=LEAFSPEC, category=FutureWarning)
