"""ONF TAPI 2.1.3 for a node's optical switch: topology as state, connectivity services as cross-connects."""

from .model import Switch, TapiConfig
from .switch import SwitchAgent

__all__ = ["Switch", "SwitchAgent", "TapiConfig"]
