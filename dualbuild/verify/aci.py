"""The ACI's own rules (appc.md §1, §2): what actool and rkt would reject."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from dualbuild.archive import ACI_MANIFEST, decompressed_stream
from dualbuild.recipe.rules import AC_IDENTIFIER, AC_NAME, ENV_NAME

_APPC_ARCHES = {
    "amd64",
    "i386",
    "aarch64",
    "aarch64_be",
    "armv6l",
    "armv7l",
    "armv7b",
    "ppc64",
    "ppc64le",
    "s390x",
}


def aci_structure(aci: Path) -> list[str]:
    """Problems with an ACI's layout and manifest: what actool and rkt would reject."""
    problems: list[str] = []
    seen: set[str] = set()
    manifest: object = None
    try:
        with aci.open("rb") as raw, tarfile.open(fileobj=decompressed_stream(raw), mode="r|") as archive:
            for index, member in enumerate(archive):
                name = member.name.rstrip("/")
                if name in seen:
                    problems.append(f"ACI: duplicate entry {name}")
                seen.add(name)
                if index == 0 and name != "manifest":
                    problems.append(f"ACI: the first entry is {name!r}, not 'manifest'")
                if name == ACI_MANIFEST:
                    # Read as JSON only: what is wrong with it is for _manifest_problems to say.
                    content = archive.extractfile(member)
                    manifest = json.loads(content.read()) if content else None
                elif name != "rootfs" and not name.startswith("rootfs/"):
                    problems.append(f"ACI: entry {name!r} is outside rootfs/")
    except (OSError, EOFError, tarfile.TarError, ValueError) as exc:
        return [f"ACI: cannot read {aci.name}: {exc}"]
    except RecursionError:
        return [f"ACI: cannot read {aci.name}: its manifest nests too deeply"]
    if "rootfs" not in seen:
        problems.append("ACI: no rootfs entry")
    if not isinstance(manifest, dict):
        return [*problems, "ACI: no manifest"]
    return problems + _manifest_problems(manifest)


def _manifest_problems(manifest: dict[str, object]) -> list[str]:
    problems = []
    if manifest.get("acKind") != "ImageManifest":
        problems.append("ACI manifest: acKind is not ImageManifest")
    if not AC_IDENTIFIER.fullmatch(str(manifest.get("name", ""))):
        problems.append(f"ACI manifest: name {manifest.get('name')!r} is not an AC Identifier")
    labels = {str(x.get("name")): str(x.get("value")) for x in _dicts(manifest.get("labels"))}
    if labels.get("os") == "linux" and labels.get("arch") not in _APPC_ARCHES:
        problems.append(f"ACI manifest: arch {labels.get('arch')!r} is not an appc linux arch")
    app = manifest.get("app")
    if isinstance(app, dict):
        for field in ("user", "group"):
            if not isinstance(app.get(field), str) or not app.get(field):
                problems.append(f"ACI manifest: app.{field} is required (a string)")
        for variable in _dicts(app.get("environment")):
            if not ENV_NAME.fullmatch(str(variable.get("name", ""))):
                problems.append(f"ACI manifest: environment name {variable.get('name')!r} is invalid")
        for port in _dicts(app.get("ports")):
            if not AC_NAME.fullmatch(str(port.get("name", ""))):
                problems.append(f"ACI manifest: port name {port.get('name')!r} is not an AC Name")
    return problems


def _dicts(value: object) -> list[dict[str, object]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
