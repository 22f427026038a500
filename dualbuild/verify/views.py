"""The Docker tarball's views of its one image agree: one config, the same layers, everywhere.

A dualbuild Docker tarball names its image three ways (emit/docker.py): ``manifest.json`` for
Docker's loader, ``index.json`` and the OCI manifest it points at for containerd, skopeo and
buildah, and ``repositories`` with the legacy ``<id>/json`` for readers older than
manifest.json (docker2aci). Each reader takes its own view, so a view that names another
config, other layers or another platform is an image that changes with the reader.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass

_BLOBS = "blobs/sha256/"


@dataclass(frozen=True, kw_only=True)
class ListedImage:
    """The image as ``manifest.json`` lists it, with the config it names read and parsed."""

    config_path: str
    layer_paths: tuple[str, ...]
    config_bytes: bytes
    config: dict[str, object]


def check_views(outer: tarfile.TarFile, listed: ListedImage, differences: list[str]) -> dict[str, str]:
    """Check index.json, the OCI manifest and the legacy json against ``manifest.json``'s image.

    Args:
        outer: The Docker tarball, open.
        listed: What manifest.json names, and its config.
        differences: Gets one line per disagreement, naming the view and both values.

    Returns:
        The OCI manifest's annotations (what the ACI's annotations must say); empty when
        there is no manifest to read them from.
    """
    config_digest = "sha256:" + hashlib.sha256(listed.config_bytes).hexdigest()
    layer_digests = [_digest_of_path(path) for path in listed.layer_paths]
    index = _member_json(outer, "index.json", differences)
    descriptors = index.get("manifests") if isinstance(index, dict) else None
    if (
        not isinstance(descriptors, list)
        or not descriptors
        or not all(isinstance(d, dict) for d in descriptors)
    ):
        if index is not None:
            differences.append("docker archive: index.json names no image manifest")
        _check_legacy(outer, listed, differences)
        return {}
    digests = sorted({str(descriptor.get("digest")) for descriptor in descriptors})
    if len(digests) != 1:
        differences.append(
            f"docker archive: index.json names {len(digests)} manifests ({', '.join(digests)}); "
            "every tag must name the one image"
        )
    for descriptor in descriptors:
        _check_descriptor(outer, descriptor, listed.config, differences)
    annotations: dict[str, str] = {}
    for position, digest in enumerate(digests):
        manifest = _member_json(outer, _BLOBS + digest.removeprefix("sha256:"), differences)
        if not isinstance(manifest, dict):
            continue
        where = f"docker archive: index.json's manifest {digest}"
        config = manifest.get("config")
        named = str(config.get("digest")) if isinstance(config, dict) else None
        if named != config_digest:
            differences.append(f"{where} names config {named}, manifest.json names {config_digest}")
        elif isinstance(config, dict) and config.get("size") != len(listed.config_bytes):
            differences.append(
                f"{where}: config size is {_shown(config.get('size'))}, "
                f"the config holds {len(listed.config_bytes)} bytes"
            )
        layers = manifest.get("layers")
        named_layers = (
            [str(d.get("digest")) for d in layers if isinstance(d, dict)] if isinstance(layers, list) else []
        )
        if named_layers != layer_digests:
            differences.append(f"{where} names layers {named_layers}, manifest.json names {layer_digests}")
        for layer in layers if isinstance(layers, list) else []:
            if isinstance(layer, dict):
                _check_size(outer, layer, f"{where}: layer", differences)
        found = manifest.get("annotations")
        if position == 0 and isinstance(found, dict):
            annotations = {str(key): str(value) for key, value in found.items()}
    _check_legacy(outer, listed, differences)
    return annotations


def _check_descriptor(
    outer: tarfile.TarFile, descriptor: dict[str, object], config: dict[str, object], differences: list[str]
) -> None:
    where = f"docker archive: index.json's descriptor of {descriptor.get('digest')}"
    _check_size(outer, descriptor, where, differences)
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return
    for key in ("architecture", "os", "variant"):
        if platform.get(key) != config.get(key):
            differences.append(
                f"{where}: platform {key} is {_shown(platform.get(key))}, "
                f"the config says {_shown(config.get(key))}"
            )


def _check_size(
    outer: tarfile.TarFile, descriptor: dict[str, object], where: str, differences: list[str]
) -> None:
    """A descriptor's size must be its blob's (a missing blob is named where it is read)."""
    try:
        member = outer.getmember(_BLOBS + str(descriptor.get("digest")).removeprefix("sha256:"))
    except KeyError:
        differences.append(f"{where}: blob {descriptor.get('digest')} is missing")
        return
    if descriptor.get("size") != member.size:
        differences.append(
            f"{where}: size is {_shown(descriptor.get('size'))}, the blob holds {member.size} bytes"
        )


def _check_legacy(outer: tarfile.TarFile, listed: ListedImage, differences: list[str]) -> None:
    """Every ``<id>/json`` that ``repositories`` names holds the config's platform and runtime fields."""
    repositories = _member_json(outer, "repositories", differences, required=False)
    if not isinstance(repositories, dict):
        return
    ids = sorted(
        {
            str(layer_id)
            for tags in repositories.values()
            if isinstance(tags, dict)
            for layer_id in tags.values()
        }
    )
    for layer_id in ids:
        legacy = _member_json(outer, f"{layer_id}/json", differences)
        if not isinstance(legacy, dict):
            continue
        for key in ("architecture", "variant", "os", "created"):
            if legacy.get(key) != listed.config.get(key):
                differences.append(
                    f"docker archive: {layer_id}/json's {key} is {_shown(legacy.get(key))}, "
                    f"the config's {_shown(listed.config.get(key))}"
                )
        old, new = legacy.get("config"), listed.config.get("config")
        old_fields = old if isinstance(old, dict) else {}
        new_fields = new if isinstance(new, dict) else {}
        for key in sorted(set(old_fields) | set(new_fields)):
            if old_fields.get(key) != new_fields.get(key):
                differences.append(
                    f"docker archive: {layer_id}/json's config {key} is {_shown(old_fields.get(key))}, "
                    f"the config's {_shown(new_fields.get(key))}"
                )


def _digest_of_path(path: str) -> str:
    return "sha256:" + path.removeprefix(_BLOBS) if path.startswith(_BLOBS) else path


def _member_json(
    outer: tarfile.TarFile, name: str, differences: list[str], *, required: bool = True
) -> object:
    try:
        content = outer.extractfile(name)
    except KeyError:
        content = None
    if content is None:
        if required:
            differences.append(f"docker archive: {name} is missing")
        return None
    try:
        return json.loads(content.read())
    except (ValueError, RecursionError) as error:
        differences.append(f"docker archive: {name} is not JSON dualbuild can read ({type(error).__name__})")
        return None


def _shown(value: object) -> str:
    """A JSON value as the message shows it ("none" when absent)."""
    return "none" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
