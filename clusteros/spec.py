"""Load, check and resolve cluster.yaml.

The schema in schema/cluster.schema.json is the single home of every default.
`load_spec` returns the *resolved* spec: defaults filled in, the node list made
explicit (name, role, LAN MAC and address), distro-dependent values chosen.
Every later stage reads only the resolved spec.

Every problem is collected and reported at once as a `SpecError`, each with its
place in the file ("nodes[2].name (line 14): ...") and a hint where one helps.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import yaml

from clusteros import paths

MAX_SPEC_BYTES = 1024 * 1024
MAX_YAML_NODES = 20_000
MAX_YAML_DEPTH = 32

DEFAULT_SUITES = {"debian": "bookworm", "ubuntu": "noble"}
DEFAULT_MIRRORS = {
    "debian": "http://deb.debian.org/debian",
    "ubuntu": "http://archive.ubuntu.com/ubuntu",
}
# The first host addresses of the LAN are left to routers and servers already there.
LAN_HOST_OFFSET = 10


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    hint: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.line is not None:
            where += f" (line {self.line})"
        text = f"{where}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class SpecError(Exception):
    """The spec cannot be used. Carries every problem found."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        head = f"{self.source}: {count} problem{'s' if count != 1 else ''}"
        return "\n".join([head] + [f"  {p}" for p in self.problems])


# --------------------------------------------------------------------------
# YAML: safe, bounded, with line numbers


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _check_size(root: yaml.Node) -> str | None:
    """Refuse alias bombs and absurd nesting before anything walks the data."""
    count = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            return f"more than {MAX_YAML_NODES} values once aliases are expanded"
        if depth > MAX_YAML_DEPTH:
            return f"nested deeper than {MAX_YAML_DEPTH} levels"
        if isinstance(node, yaml.MappingNode):
            stack.extend((v, depth + 1) for pair in node.value for v in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, depth + 1) for v in node.value)
    return None


def _line_map(root: yaml.Node) -> dict[tuple, int]:
    """Map each data path (tuple of keys/indexes) to its 1-based line (a key's own line)."""
    lines: dict[tuple, int] = {(): root.start_mark.line + 1}
    stack = [((), root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            children = [((k.value if isinstance(k, yaml.ScalarNode) else None), k, v) for k, v in node.value]
            for key, key_node, value in children:
                lines.setdefault(path + (key,), key_node.start_mark.line + 1)
                stack.append((path + (key,), value))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                lines.setdefault(path + (i,), value.start_mark.line + 1)
                stack.append((path + (i,), value))
    return lines


def parse_yaml(data: bytes, source: str) -> tuple[object, dict[tuple, int]]:
    """Parse YAML bytes into plain data and a path->line map, or raise SpecError."""
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(source, [Problem("", f"file is {len(data)} bytes; the limit is {MAX_SPEC_BYTES}",
                                         "a cluster spec is a few kilobytes: is this the right file?")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(source, [Problem("", f"byte {exc.start} is not UTF-8", "save the file as UTF-8",
                                         line)]) from None
    try:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None, {}
            if (reason := _check_size(root)) is not None:
                raise SpecError(source, [Problem("", f"refused: {reason}",
                                                 "write the spec out plainly, without alias tricks")])
            data_obj = loader.construct_document(root)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc)
        raise SpecError(source, [Problem("", f"not valid YAML: {what}", "", line)]) from None
    return data_obj, _line_map(root)


# --------------------------------------------------------------------------
# Schema validation with readable messages


def load_schema() -> dict:
    return json.loads(paths.SCHEMA_FILE.read_text())


def format_path(parts) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _resolve_ref(root: dict, ref: str) -> dict:
    node = root
    for key in ref.lstrip("#/").split("/"):
        node = node[key]
    return node


# Messages for patterns, keyed by the $defs name or property that carries them.
_PATTERN_MESSAGES = {
    "hostname": ("is not a valid hostname", "use lower-case letters, digits and '-', starting with a letter"),
    "cidr": ("is not a subnet in CIDR form", "write it like 10.42.0.0/24"),
    "ipv4": ("is not an IPv4 address", "write it like 10.42.0.11"),
    "mac": ("is not a MAC address", "write it in lower case like 52:54:00:12:34:56"),
    "url": ("is not an http(s) or file URL", "write it like http://deb.debian.org/debian"),
    "disk_size": ("is not a size", "write a number with M or G, like 4G"),
    "ssh_keys": ("is not an SSH public key", "paste one line of a .pub file, e.g. 'ssh-ed25519 AAAA... you@host'"),
    "sha256": ("is not a sha256 hex digest", "64 lower-case hex digits, as sha256sum prints"),
}


def _pattern_message(schema: dict, error) -> tuple[str, str]:
    ref = error.schema.get("$ref", "")
    candidates = [ref.rsplit("/", 1)[-1]] if ref else []
    candidates += [p for p in reversed(list(error.absolute_path)) if isinstance(p, str)][:2]
    parent_ref = [k for k, v in schema["$defs"].items() if v.get("pattern") == error.schema.get("pattern")]
    candidates += parent_ref
    for name in candidates:
        if name in _PATTERN_MESSAGES:
            return _PATTERN_MESSAGES[name]
    return "has the wrong form", f"it must match {error.schema.get('pattern')}"


def _describe(schema: dict, error) -> list[Problem]:
    path = list(error.absolute_path)
    where = format_path(path)
    value = error.instance
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(value) - set(allowed), key=str)
        problems = []
        for key in extra:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
            if key == "psk":
                hint = "a WiFi key never goes in cluster.yaml: set psk_env (an environment variable) or psk_file"
            problems.append(Problem(format_path(path + [key]), "unknown key", hint))
        return problems
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return [Problem(format_path(path + [k]), "is required", "") for k in missing]
    if kind == "pattern":
        message, hint = _pattern_message(schema, error)
        return [Problem(where, f"{value!r} {message}", hint)]
    if kind == "enum":
        options = ", ".join(repr(o) for o in error.validator_value)
        close = difflib.get_close_matches(str(value), [str(o) for o in error.validator_value], n=1)
        hint = f"did you mean {close[0]!r}?" if close else ""
        return [Problem(where, f"{value!r} is not one of {options}", hint)]
    if kind == "type":
        expected = error.validator_value
        return [Problem(where, f"{value!r} should be {_a(expected)}, not {_a(_json_type(value))}", "")]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sub = error.schema
        lo, hi = sub.get("minimum"), sub.get("maximum")
        return [Problem(where, f"{value!r} is out of range", f"allowed: {lo} to {hi}")]
    if kind in ("maxLength", "minLength"):
        return [Problem(where, f"is {len(value)} characters long",
                        f"allowed: {error.schema.get('minLength', 0)} to {error.schema.get('maxLength', 'any')}")]
    if kind in ("maxItems", "minItems"):
        return [Problem(where, f"has {len(value)} entries",
                        f"allowed: {error.schema.get('minItems', 0)} to {error.schema.get('maxItems', 'any')}")]
    if kind == "uniqueItems":
        return [Problem(where, "has duplicate entries", "list each only once")]
    if kind == "oneOf":
        # nodes: a count or a list. Report against the branch the user obviously meant.
        best = jsonschema.exceptions.best_match(error.context) if error.context else None
        if best is not None and (isinstance(value, list) or isinstance(value, dict)):
            branch = [e for e in error.context if (e.schema_path[0] == 1) == isinstance(value, list)]
            problems = []
            for sub in branch:
                problems.extend(_describe(schema, sub))
            if problems:
                return problems
        return [Problem(where, f"{value!r} is neither a node count nor a node list",
                        "write `nodes: {count: 3}` or a list of `- name: node1`")]
    return [Problem(where, error.message, "")]


def _json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _a(kind) -> str:
    if isinstance(kind, list):
        return " or ".join(_a(k) for k in kind)
    return ("an " if str(kind)[0] in "aeiou" else "a ") + str(kind)


def schema_problems(data, schema: dict) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        problems.extend(_describe(schema, error))
    return problems


# --------------------------------------------------------------------------
# Defaults and resolution


def fill_defaults(data, schema: dict, root: dict | None = None):
    """Return a copy of `data` with every object default from the schema filled in."""
    root = root or schema
    while "$ref" in schema:
        schema = _resolve_ref(root, schema["$ref"])
    if isinstance(data, dict) and "properties" in schema:
        out = dict(data)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = fill_defaults(out[key], sub, root)
        return out
    if isinstance(data, list) and "items" in schema:
        return [fill_defaults(item, schema["items"], root) for item in data]
    if "oneOf" in schema:
        # The branches differ by type (nodes: a count object or a list): follow the matching one.
        for branch in schema["oneOf"]:
            if branch.get("type") == _json_type(data):
                return fill_defaults(data, branch, root)
    return data


def mac_prefix(cluster_name: str) -> str:
    """Locally administered MAC prefix for a cluster's test VMs; byte 6 is the node index."""
    digest = hashlib.sha256(cluster_name.encode()).digest()
    return "52:54:00:{:02x}:{:02x}".format(digest[0], digest[1])


def node_mac(cluster_name: str, index: int) -> str:
    return f"{mac_prefix(cluster_name)}:{index:02x}"


def lan_address(subnet: str, index: int) -> str:
    net = ipaddress.ip_network(subnet)
    return str(net.network_address + LAN_HOST_OFFSET + index)


def _expand_nodes(nodes, cluster_name: str, subnet: str) -> list[dict]:
    if isinstance(nodes, dict):
        prefix = nodes.get("prefix", "node")
        nodes = [{"name": f"{prefix}{i}"} for i in range(1, nodes["count"] + 1)]
    out = []
    for index, node in enumerate(nodes, start=1):
        out.append({
            "index": index,
            "name": node["name"],
            "role": node.get("role", "auto"),
            "mac": node.get("mac") or node_mac(cluster_name, index),
            "address": node.get("address") or lan_address(subnet, index),
            "cpus": node.get("cpus"),
            "memory": node.get("memory"),
        })
    return out


def semantic_problems(spec: dict, base_dir: Path) -> list[Problem]:
    """Checks a schema cannot express: uniqueness, subnets, cross-references, secrets."""
    problems = []
    net = spec["network"]
    subnets = {}
    for key in ("lan", "wireguard"):
        try:
            subnets[key] = ipaddress.ip_network(net[key]["subnet"])
        except ValueError as exc:
            problems.append(Problem(f"network.{key}.subnet", f"{net[key]['subnet']!r}: {exc}",
                                    "the host bits must be zero, e.g. 10.42.0.0/24"))
    if len(subnets) == 2 and subnets["lan"].overlaps(subnets["wireguard"]):
        problems.append(Problem("network.wireguard.subnet", "overlaps network.lan.subnet",
                                "give the mesh its own range, e.g. 10.99.0.0/24"))

    raw_nodes = spec["nodes"]
    listed = raw_nodes if isinstance(raw_nodes, list) else []
    count = len(listed) if listed else raw_nodes["count"]
    names: dict[str, int] = {}
    for i, node in enumerate(listed):
        if node["name"] in names:
            problems.append(Problem(f"nodes[{i}].name", f"{node['name']!r} is already used by nodes[{names[node['name']]}]",
                                    "every node needs its own name"))
        names.setdefault(node["name"], i)
    for field in ("mac", "address"):
        seen: dict[str, int] = {}
        for i, node in enumerate(listed):
            value = node.get(field)
            if value is None:
                continue
            if value in seen:
                problems.append(Problem(f"nodes[{i}].{field}", f"{value!r} is already used by nodes[{seen[value]}]", ""))
            seen.setdefault(value, i)
    if "lan" in subnets:
        lan = subnets["lan"]
        usable = lan.num_addresses - 2
        vm_count = max(count, spec["vm"].get("nodes") or 0)
        if usable < LAN_HOST_OFFSET + vm_count:
            problems.append(Problem("network.lan.subnet", f"{lan} is too small for {vm_count} nodes",
                                    f"nodes take addresses from .{LAN_HOST_OFFSET + 1} on: use a /24"))
        for i, node in enumerate(listed):
            if "address" in node:
                addr = ipaddress.ip_address(node["address"])
                if addr not in lan or addr in (lan.network_address, lan.broadcast_address):
                    problems.append(Problem(f"nodes[{i}].address", f"{node['address']} is not a host address in {lan}", ""))
    if "wireguard" in subnets and subnets["wireguard"].num_addresses - 2 < count:
        problems.append(Problem("network.wireguard.subnet", f"{subnets['wireguard']} is too small for {count} nodes", "use a /24"))

    if listed and spec["vm"].get("nodes", 0) > len(listed):
        problems.append(Problem("vm.nodes", f"{spec['vm']['nodes']} VMs but only {len(listed)} nodes are listed",
                                "list more nodes, or use `nodes: {count: N}`"))

    slurm = spec["services"]["slurm"]
    all_names = set(names) if listed else {f"{raw_nodes.get('prefix', 'node')}{i}" for i in range(1, count + 1)}
    defaults = [i for i, p in enumerate(slurm["partitions"]) if p.get("default")]
    if len(defaults) > 1:
        problems.append(Problem(f"services.slurm.partitions[{defaults[1]}].default", "a second default partition",
                                "only one partition can be the default"))
    for i, part in enumerate(slurm["partitions"]):
        for j, name in enumerate(part.get("nodes", [])):
            if name not in all_names:
                close = difflib.get_close_matches(name, sorted(all_names), n=1)
                problems.append(Problem(f"services.slurm.partitions[{i}].nodes[{j}]", f"no node is named {name!r}",
                                        f"did you mean {close[0]!r}?" if close else ""))

    packer = spec["image"]["packer"]
    if spec["image"]["builder"] == "packer" and packer["base"] == "iso" and not (
            "iso_url" in packer and "iso_sha256" in packer):
        problems.append(Problem("image.packer", "base: iso needs iso_url and iso_sha256",
                                "or use base: native, which boots the native build and works offline"))
    if spec["image"]["builder"] == "packer" and packer["base"] == "iso" and spec["image"]["distro"] != "ubuntu":
        problems.append(Problem("image.packer.base", "iso is Ubuntu's live-server autoinstall",
                                "set image.distro: ubuntu, or use base: native"))

    k3s = spec["services"]["k3s"]
    if "url" in k3s and "file" in k3s:
        problems.append(Problem("services.k3s", "gives both url and file", "keep one: url to download, file for air-gapped builds"))
    if ("url" in k3s or "file" in k3s) and "sha256" not in k3s:
        problems.append(Problem("services.k3s.sha256", "is required with url or file",
                                "the binary is checked against it before it goes into the image"))
    if "file" in k3s and not _resolve_path(k3s["file"], base_dir).is_file():
        problems.append(Problem("services.k3s.file", f"{k3s['file']!r} does not exist", ""))

    wifi = net.get("wifi")
    if wifi is not None:
        sources = [k for k in ("psk_env", "psk_file") if k in wifi]
        if len(sources) != 1:
            problems.append(Problem("network.wifi", "needs exactly one of psk_env or psk_file",
                                    "the WiFi key is read at build time from an environment variable or a 0600 file"))
        elif "psk_file" in wifi and not _resolve_path(wifi["psk_file"], base_dir).is_file():
            problems.append(Problem("network.wifi.psk_file", f"{wifi['psk_file']!r} does not exist", ""))

    secret_file = spec["cluster"].get("secret_file")
    if secret_file is not None:
        path = _resolve_path(secret_file, base_dir)
        if not path.is_file():
            problems.append(Problem("cluster.secret_file", f"{secret_file!r} does not exist",
                                    "create it with: head -c 32 /dev/urandom > FILE && chmod 600 FILE"))
        elif path.stat().st_size < 32:
            problems.append(Problem("cluster.secret_file", "holds fewer than 32 bytes", "use at least 32 random bytes"))

    users = spec["image"]["users"]
    seen_users: dict[str, int] = {}
    for i, user in enumerate(users):
        if user["name"] in seen_users:
            problems.append(Problem(f"image.users[{i}].name", f"{user['name']!r} is listed twice", ""))
        if user["name"] == "root":
            problems.append(Problem(f"image.users[{i}].name", "root cannot log in over SSH",
                                    "name a normal user; it gets sudo"))
        seen_users.setdefault(user["name"], i)
    return problems


def _resolve_path(value: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base_dir / path


def resolve(spec: dict, base_dir: Path) -> dict:
    """Turn a valid, default-filled spec into the resolved form all stages read."""
    spec = copy.deepcopy(spec)
    name = spec["cluster"]["name"]
    image = spec["image"]
    image.setdefault("suite", DEFAULT_SUITES[image["distro"]])
    image.setdefault("mirror", DEFAULT_MIRRORS[image["distro"]])
    raw_nodes = spec["nodes"]
    spec["node_naming"] = {
        "prefix": raw_nodes.get("prefix", "node") if isinstance(raw_nodes, dict) else "node",
        "mac_prefix": mac_prefix(name),
        "listed": isinstance(raw_nodes, list),
    }
    spec["nodes"] = _expand_nodes(raw_nodes, name, spec["network"]["lan"]["subnet"])
    spec["vm"].setdefault("nodes", len(spec["nodes"]))
    if spec["cluster"].get("secret_file"):
        spec["cluster"]["secret_file"] = str(_resolve_path(spec["cluster"]["secret_file"], base_dir))
    k3s = spec["services"]["k3s"]
    if k3s.get("file"):
        k3s["file"] = str(_resolve_path(k3s["file"], base_dir))
    wifi = spec["network"].get("wifi")
    if wifi and wifi.get("psk_file"):
        wifi["psk_file"] = str(_resolve_path(wifi["psk_file"], base_dir))
    return spec


def spec_path(explicit: str | os.PathLike | None = None) -> Path:
    """The spec in use: an explicit path, else $CLUSTEROS_SPEC, else ./cluster.yaml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("CLUSTEROS_SPEC") or "cluster.yaml")


def load_spec(path: str | os.PathLike | None = None) -> dict:
    """Read, check and resolve a spec file. Raises SpecError listing every problem."""
    path = spec_path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(source, [Problem("", "file not found",
                                         "run from the project directory or set CLUSTEROS_SPEC")]) from None
    except OSError as exc:
        raise SpecError(source, [Problem("", f"cannot read: {exc.strerror}", "")]) from None
    return check_spec_data(data, source, path.resolve().parent)


def check_spec_data(data: bytes, source: str, base_dir: Path) -> dict:
    obj, lines = parse_yaml(data, source)
    if not isinstance(obj, dict):
        raise SpecError(source, [Problem("", "the spec must be a mapping with at least `cluster: {name: ...}`",
                                         "start from the cluster.yaml shipped with ClusterOS", 1)])
    schema = load_schema()
    problems = schema_problems(obj, schema)
    if not problems:
        filled = fill_defaults(obj, schema)
        problems = semantic_problems(filled, base_dir)
    if problems:
        raise SpecError(source, [_with_line(p, lines) for p in problems])
    return resolve(filled, base_dir)


def _with_line(problem: Problem, lines: dict[tuple, int]) -> Problem:
    parts = _parse_path(problem.path)
    while parts and tuple(parts) not in lines:
        parts.pop()
    line = lines.get(tuple(parts))
    return Problem(problem.path, problem.message, problem.hint, line)


def _parse_path(text: str) -> list:
    parts: list = []
    for chunk in text.replace("[", ".[").split("."):
        if not chunk:
            continue
        parts.append(int(chunk[1:-1]) if chunk.startswith("[") else chunk)
    return parts


# --------------------------------------------------------------------------
# Views of the spec: what each stage depends on. Keeping these narrow is what
# lets a change to vm.memory rebuild no image.


def rootfs_view(spec: dict) -> dict:
    image = spec["image"]
    return {k: image[k] for k in ("distro", "suite", "mirror", "architecture", "packages")}


def node_view(spec: dict) -> dict:
    """The part of the spec baked into the image as /etc/clusteros/spec.json."""
    return {k: spec[k] for k in ("cluster", "nodes", "node_naming", "network", "services")} | {
        "image": {k: spec["image"][k] for k in ("distro", "suite", "timezone", "locale")}}


def image_view(spec: dict) -> dict:
    return {"node": node_view(spec), "image": spec["image"]}


def vm_view(spec: dict) -> dict:
    return {"vm": spec["vm"], "nodes": spec["nodes"], "cluster": spec["cluster"]["name"]}
