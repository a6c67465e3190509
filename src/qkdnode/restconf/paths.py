"""RFC 8040 section 3.5.3 resource identifiers (`module:node/list=k1,k2/leaf`) to libyang data paths.

`/restconf/data/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link=6f1c...` becomes
`/etsi-qkd-sdn-node:qkd_node/qkd_links/qkd_link[qkdl_id='6f1c...']`: the first step must name its
module, later steps name one only where the module changes (as in RFC 7951 JSON), list keys are
given in the order the schema declares them, percent-encoded, comma separated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

import libyang
from _libyang import ffi, lib

from ..netconf import errors as E


@dataclass(frozen=True)
class Step:
    module: str
    name: str
    keys: tuple[str, ...] = ()  # key leaf names (lists) ...
    values: tuple[str, ...] = ()  # ... and their values; a leaf-list instance: keys == (".",)
    is_list: bool = False
    is_leaflist: bool = False
    config: bool = True


@dataclass(frozen=True)
class ApiPath:
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def is_root(self) -> bool:
        return not self.steps

    @property
    def data_path(self) -> str:
        """libyang data path (`/mod:a/b[k='v']`), '' for the datastore itself."""
        return data_path(self.steps)

    @property
    def schema_path(self) -> str:
        return schema_path(self.steps)

    @property
    def parent(self) -> "ApiPath":
        return ApiPath(self.steps[:-1])

    @property
    def target(self) -> Step:
        return self.steps[-1]

    @property
    def instance(self) -> bool:
        """Every list and leaf-list step has its keys: the path names one data node."""
        return all(s.values or not (s.is_list or s.is_leaflist) for s in self.steps)


def _quote(value: str) -> str:
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise E.InvalidValue(message=f"key value {value!r} holds both quote characters")


def data_path(steps: tuple[Step, ...] | list[Step]) -> str:
    out: list[str] = []
    module = ""
    for s in steps:
        name = s.name if s.module == module else f"{s.module}:{s.name}"
        module = s.module
        preds = "".join(
            f"[.={_quote(v)}]" if k == "." else f"[{k}={_quote(v)}]" for k, v in zip(s.keys, s.values)
        )
        out.append(f"/{name}{preds}")
    return "".join(out)


def schema_path(steps: tuple[Step, ...] | list[Step]) -> str:
    return "".join(f"/{s.module}:{s.name}" for s in steps)


def _split_segments(path: str) -> list[str]:
    """Split on '/' (encoded slashes inside keys stay encoded until the keys are decoded)."""
    return [seg for seg in path.split("/") if seg != ""]


def parse_api_path(ctx: libyang.Context, raw: str) -> ApiPath:
    """`raw` is the part after `/restconf/data/`, still percent-encoded."""
    steps: list[Step] = []
    module = ""
    segments = _split_segments(raw)
    for i, seg in enumerate(segments):
        name_part, has_keys, key_part = seg.partition("=")
        name = unquote(name_part)
        if ":" in name:
            module, name = name.split(":", 1)
        elif not module:
            raise E.InvalidValue(
                message=f"the first step {name!r} of a resource identifier must name its module (module:node)"
            )
        if not name:
            raise E.InvalidValue(message=f"empty node name in resource identifier {raw!r}")
        probe = schema_path([*steps, Step(module, name)])
        try:
            snodes = list(ctx.find_path(probe))
        except libyang.LibyangError:
            snodes = []
        finally:
            lib.ly_err_clean(ctx.cdata, ffi.NULL)
        if not snodes:
            raise E.InvalidValue(
                message=f"no data node {module}:{name} at {schema_path(steps) or '/'}",
                info={"bad-element": name},
            )
        snode = snodes[0]
        is_list = isinstance(snode, libyang.SList)
        is_leaflist = isinstance(snode, libyang.SLeafList)
        keys: tuple[str, ...] = ()
        values: tuple[str, ...] = ()
        if has_keys:
            raw_values = key_part.split(",")
            values = tuple(unquote(v) for v in raw_values)
            if is_list:
                keys = tuple(k.name() for k in snode.keys())
            elif is_leaflist:
                keys = (".",)
            else:
                raise E.InvalidValue(message=f"{name} is not a list: it takes no key values", info={"bad-element": name})
            if len(values) != len(keys):
                raise E.InvalidValue(
                    message=f"list {name} has {len(keys)} key(s) ({', '.join(keys)}), {len(values)} value(s) given",
                    info={"bad-element": name},
                )
        config = not snode.config_false()
        steps.append(Step(module, name, keys, values, is_list, is_leaflist, config))
        if (is_list or is_leaflist) and not has_keys and i < len(segments) - 1:
            raise E.InvalidValue(
                message=f"list {name} needs its key values (`{name}=...`) before a child can be named",
                info={"bad-element": name},
            )
    return ApiPath(tuple(steps))
