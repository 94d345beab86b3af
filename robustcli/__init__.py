"""robustcli: corruption and adversarial robustness of push-pull and top-down CNNs."""

from __future__ import annotations

__version__ = "0.1.0"
