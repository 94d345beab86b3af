"""Moved to ``robustcli.models.zoo``; re-exported here for one release."""

from __future__ import annotations

from robustcli.models.zoo import count_macs, models_table

__all__ = ["count_macs", "models_table"]
