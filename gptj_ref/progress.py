"""Progress bars for long work (conversion, loading a checkpoint directory): tqdm on stderr, drawn only
when stderr is a terminal, so logs, pipes and tests stay clean."""

from __future__ import annotations

import sys
from typing import Optional, TextIO


def progress_bar(total: int, label: str, enabled: bool = True, unit: str = "B", stream: Optional[TextIO] = None):
    """A tqdm bar over `total` units (bytes by default, shown as kB/MB/GB with rate and time left);
    `.update(n)` and `.close()`. Disabled (draws nothing) unless `enabled` and the stream is a terminal."""
    from tqdm import tqdm

    stream = sys.stderr if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return tqdm(
        total=total,
        desc=label,
        unit=unit,
        unit_scale=unit == "B",
        unit_divisor=1000,
        file=stream,
        disable=not (enabled and terminal),
        dynamic_ncols=True,
    )
