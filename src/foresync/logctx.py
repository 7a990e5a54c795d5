"""Log context: the volume a process serves, put on every log line as ``vol=<name>``.

The CLI installs the filter on its one handler; ``run`` names the volume once its config is
loaded. Nothing else configures logging.
"""

from __future__ import annotations

import logging


class VolumeContext(logging.Filter):
    volume = "-"

    def filter(self, record: logging.LogRecord) -> bool:
        record.volume = VolumeContext.volume
        return True
