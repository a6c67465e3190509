"""RESTCONF (RFC 8040) face of the node: the same datastores, validation and commit path as NETCONF."""

from .server import RestconfServer

__all__ = ["RestconfServer"]
