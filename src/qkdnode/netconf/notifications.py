"""RFC 5277 event notifications: the NETCONF stream and its subscribers."""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import Callable

from lxml import etree

from .filters import ListKeys, subtree_filter
from .namespaces import NOTIF_NS

log = logging.getLogger(__name__)

STREAM = "NETCONF"


def event_time() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Subscription:
    session_id: int
    send: Callable[[str], None]
    filter_el: etree._Element | None = None


class EventStream:
    """Fan-out of notifications to subscribed sessions (one stream: NETCONF)."""

    def __init__(self, keys: ListKeys) -> None:
        self.keys = keys
        self.subscriptions: dict[int, Subscription] = {}
        self.sent = 0
        self.hooks: list[Callable[[str], None]] = []

    def subscribe(self, sub: Subscription) -> None:
        self.subscriptions[sub.session_id] = sub

    def unsubscribe(self, session_id: int) -> None:
        self.subscriptions.pop(session_id, None)

    def publish(self, content_xml: str) -> None:
        """Send one notification body (an element in its module's namespace) to subscribers."""
        when = event_time()
        for hook in self.hooks:
            hook(content_xml)
        for sub in list(self.subscriptions.values()):
            body = content_xml
            if sub.filter_el is not None:
                body = subtree_filter(content_xml, sub.filter_el, self.keys)
                if not body:
                    continue
            msg = f'<notification xmlns="{NOTIF_NS}"><eventTime>{when}</eventTime>{body}</notification>'
            try:
                sub.send(msg)
                self.sent += 1
            except Exception:  # a dying session must not stop the others
                log.debug("notification to session %d failed", sub.session_id, exc_info=True)
