"""NETCONF `<rpc-error>`s (RFC 6241 section 4.3 and Appendix A) as exception classes.

Every error-tag of Appendix A is a class that knows its default error-type and renders its own
`<rpc-error>` element. The dispatcher catches `RpcError` and sends `to_xml()`; anything else
becomes `OperationFailed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar
from xml.sax.saxutils import escape

from .namespaces import NC_NS


class ErrorType(str, Enum):
    TRANSPORT = "transport"
    RPC = "rpc"
    PROTOCOL = "protocol"
    APPLICATION = "application"


@dataclass
class RpcError(Exception):
    """Base of all NETCONF errors; subclasses fix `tag` and a default `error_type`."""

    message: str = ""
    error_type: ErrorType | None = None
    path: str | None = None
    app_tag: str | None = None
    info: dict[str, str] = field(default_factory=dict)
    # error-path prefixes: prefix -> namespace, declared on the <error-path> element
    path_namespaces: dict[str, str] = field(default_factory=dict)

    tag: ClassVar[str] = "operation-failed"
    default_type: ClassVar[ErrorType] = ErrorType.APPLICATION

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message or self.tag)
        if self.error_type is None:
            self.error_type = self.default_type

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.tag}: {self.message}{where}"

    def to_xml(self) -> str:
        """The `<rpc-error>` element, in the base namespace of the enclosing `<rpc-reply>`."""
        assert self.error_type is not None
        parts = [
            "<rpc-error>",
            f"<error-type>{self.error_type.value}</error-type>",
            f"<error-tag>{self.tag}</error-tag>",
            "<error-severity>error</error-severity>",
        ]
        if self.app_tag:
            parts.append(f"<error-app-tag>{escape(self.app_tag)}</error-app-tag>")
        if self.path:
            decls = "".join(
                f' xmlns:{p}="{escape(ns)}"' for p, ns in sorted(self.path_namespaces.items())
            )
            parts.append(f"<error-path{decls}>{escape(self.path)}</error-path>")
        if self.message:
            parts.append(f'<error-message xml:lang="en">{escape(self.message)}</error-message>')
        if self.info:
            parts.append("<error-info>")
            for name, value in self.info.items():
                parts.append(f"<{name}>{escape(str(value))}</{name}>")
            parts.append("</error-info>")
        parts.append("</rpc-error>")
        return "".join(parts)


class InUse(RpcError):
    tag = "in-use"
    default_type = ErrorType.PROTOCOL


class InvalidValue(RpcError):
    tag = "invalid-value"
    default_type = ErrorType.APPLICATION


class TooBig(RpcError):
    tag = "too-big"
    default_type = ErrorType.TRANSPORT


class MissingAttribute(RpcError):
    tag = "missing-attribute"
    default_type = ErrorType.RPC


class BadAttribute(RpcError):
    tag = "bad-attribute"
    default_type = ErrorType.RPC


class UnknownAttribute(RpcError):
    tag = "unknown-attribute"
    default_type = ErrorType.RPC


class MissingElement(RpcError):
    tag = "missing-element"
    default_type = ErrorType.PROTOCOL


class BadElement(RpcError):
    tag = "bad-element"
    default_type = ErrorType.PROTOCOL


class UnknownElement(RpcError):
    tag = "unknown-element"
    default_type = ErrorType.APPLICATION


class UnknownNamespace(RpcError):
    tag = "unknown-namespace"
    default_type = ErrorType.APPLICATION


class AccessDenied(RpcError):
    tag = "access-denied"
    default_type = ErrorType.PROTOCOL


class LockDenied(RpcError):
    tag = "lock-denied"
    default_type = ErrorType.PROTOCOL


class ResourceDenied(RpcError):
    tag = "resource-denied"
    default_type = ErrorType.APPLICATION


class RollbackFailed(RpcError):
    tag = "rollback-failed"
    default_type = ErrorType.APPLICATION


class DataExists(RpcError):
    tag = "data-exists"
    default_type = ErrorType.APPLICATION


class DataMissing(RpcError):
    tag = "data-missing"
    default_type = ErrorType.APPLICATION


class OperationNotSupported(RpcError):
    tag = "operation-not-supported"
    default_type = ErrorType.PROTOCOL


class OperationFailed(RpcError):
    tag = "operation-failed"
    default_type = ErrorType.APPLICATION


class MalformedMessage(RpcError):
    tag = "malformed-message"
    default_type = ErrorType.RPC


class RpcErrors(Exception):
    """Several errors at once (error-option continue-on-error / validation reporting all)."""

    def __init__(self, errors: list[RpcError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors

    def to_xml(self) -> str:
        return "".join(e.to_xml() for e in self.errors)


def reply_error(message_id_attrs: str, errors: list[RpcError]) -> str:
    """A whole `<rpc-reply>` carrying `errors`."""
    body = "".join(e.to_xml() for e in errors)
    return f'<rpc-reply xmlns="{NC_NS}"{message_id_attrs}>{body}</rpc-reply>'


ALL_ERRORS: tuple[type[RpcError], ...] = (
    InUse, InvalidValue, TooBig, MissingAttribute, BadAttribute, UnknownAttribute,
    MissingElement, BadElement, UnknownElement, UnknownNamespace, AccessDenied, LockDenied,
    ResourceDenied, RollbackFailed, DataExists, DataMissing, OperationNotSupported,
    OperationFailed, MalformedMessage,
)
