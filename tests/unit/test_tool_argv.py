"""What dualbuild asks of each tool: the argv sent to buildah, gpg, skopeo, tar and mmdebstrap.

Run through the ``fake_run`` seam: nothing is started; the fake answers as the tool would.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from dualbuild import run as run_module
from dualbuild.builder import bases
from dualbuild.builder import buildah as buildah_module
from dualbuild.builder import network as network_module
from dualbuild.builder import runtime as runtime_module
from dualbuild.builder.buildah import Buildah
from dualbuild.builder.cache import cache_image, prune
from dualbuild.builder.storage import StorageOptions
from dualbuild.builder.tarballs import extract_checked
from dualbuild.errors import BuildError, CommandError, SigningError
from dualbuild.publish import docker as publish_docker
from dualbuild.publish.retry import RetryPolicy
from dualbuild.publish.types import Build, PublishRequest
from dualbuild.recipe.model import Arch, BootstrapBase, Network
from dualbuild.sign.keys import check_signing_key, export_public_key
from dualbuild.sign.signer import SigningKey, sign_argv
from tests.unit.conftest import FakeRun
from tests.unit.test_report import report_of

FINGERPRINT = "ABCDEF0123456789ABCDEF0123456789ABCDEF01"
# How every signature is asked of gpg: detached, armored, by that key, over SHA-256.
SIGN = [
    "--batch",
    "--yes",
    "--armor",
    "--detach-sign",
    "--local-user",
    FINGERPRINT,
    "--digest-algo",
    "SHA256",
]


@pytest.fixture(autouse=True)
def runtime_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runtime's state of run steps goes to the test's folder, not /run."""
    monkeypatch.setattr(runtime_module, "RUNTIME_STATE_DIR", tmp_path)
    return tmp_path


STORE = StorageOptions(root=Path("/store/root"), runroot=Path("/store/run"))


# --- buildah -------------------------------------------------------------------------------------


def test_buildah_pull_passes_tls_and_credentials_and_returns_the_image_id(fake_run: FakeRun) -> None:
    fake_run.answer("buildah", "pull", stdout="Getting image\nsha256:feedface\n")
    buildah = Buildah(storage=STORE, authfile=Path("/auth.json"))
    assert buildah.pull("registry.example/app:1", tls_verify=False) == "sha256:feedface"
    assert fake_run.of("buildah") == [
        [
            "buildah",
            "--root",
            "/store/root",
            "--runroot",
            "/store/run",
            "pull",
            "--quiet",
            "--tls-verify=false",
            "--authfile",
            "/auth.json",
            "registry.example/app:1",
        ]
    ]


def test_buildah_pull_failure_is_a_build_error_naming_the_base(fake_run: FakeRun) -> None:
    fake_run.answer("buildah", "pull", returncode=125, tail="manifest unknown")
    with pytest.raises(BuildError, match=r"cannot use base 'x:1': buildah pull failed\nmanifest unknown"):
        Buildah().pull("x:1")


def test_run_steps_get_isolation_network_user_workdir_and_env(fake_run: FakeRun, tmp_path: Path) -> None:
    buildah = Buildah(isolation="runc")
    container = buildah.new_container("scratch", label="final")
    buildah.run_in(
        container, ["/bin/sh", "-c", "make"], user="1000", workdir="/src", env={"A": "1", "B": "x y"},
        network=Network.NONE, on_line=lambda line: None,
    )  # fmt: skip
    create, step = fake_run.of("buildah")
    assert create == ["buildah", "from", "--quiet", "--pull=never", "--name", container, "scratch"]
    assert container.startswith(f"dualbuild-{buildah.session}-0-final")
    options = [
        "--isolation", "oci", "--runtime", "runc", "--network", "none", "--user", "1000", "--workingdir",
        "/src", "--env", "A=1", "--env", "B=x y", "--runtime-flag", f"root={buildah.runtime_root}",
    ]  # fmt: skip
    assert step == ["buildah", "run", *options, container, "--", "/bin/sh", "-c", "make"]
    # The runtime keeps this session's state in a folder of its own, which cleanup removes.
    assert buildah.runtime_root is not None
    assert buildah.runtime_root.parent == tmp_path
    assert buildah.runtime_root.name.startswith(f"dualbuild-runtime-{buildah.session}-")
    assert buildah.runtime_root.is_dir()
    buildah.cleanup()
    assert not buildah.runtime_root


def test_what_an_interrupted_step_left_in_the_runtime_state_is_deleted(
    fake_run: FakeRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        buildah_module.shutil, "which", lambda name: f"/usr/sbin/{name}" if name == "runc" else None
    )
    buildah = Buildah(isolation="runc")
    buildah.run_in("c", ["true"], user=None, workdir=None, env={}, network=Network.HOST, on_line=print)
    root = buildah.runtime_root
    assert root is not None
    (root / "buildah-buildah42").mkdir()  # a container runc knows
    fake_run.answer("runc", "list", stdout="buildah-buildah42\n")
    buildah.cleanup()
    assert fake_run.of("runc") == [
        ["runc", "--root", str(root), "list", "-q"],
        ["runc", "--root", str(root), "delete", "--force", "buildah-buildah42"],
    ]
    assert not root.exists()


def test_without_network_chroot_isolation_gets_an_empty_namespace_of_its_own(
    fake_run: FakeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "orphans_adopted", contextlib.nullcontext)
    buildah = Buildah(isolation="chroot")
    buildah.run_in("c", ["true"], user=None, workdir=None, env={}, network=Network.NONE, on_line=print)
    assert fake_run.calls == [
        [
            "/usr/bin/unshare",
            "--net",
            "--",
            "/usr/bin/buildah",
            "run",
            "--isolation",
            "chroot",
            "c",
            "--",
            "true",
        ]
    ]


def test_copy_is_owned_by_root_unless_told_and_cleanup_removes_what_was_made(fake_run: FakeRun) -> None:
    buildah = Buildah()
    first = buildah.new_container("scratch", label="build")
    second = buildah.new_container("scratch", label="final")
    buildah.copy(second, ["/ctx/a", "/ctx/b/"], "/srv/", owner=None, mode=0o640, contextdir=Path("/ctx"))
    buildah.copy(second, ["/out/bin"], "/usr/bin/", owner="1000:1000", mode=None, from_container=first)
    image = buildah.commit(first, label="build")
    buildah.cleanup()
    calls = fake_run.of("buildah")[2:]
    assert calls[0] == [
        "buildah",
        "copy",
        "--quiet",
        "--chown",
        "0:0",
        "--chmod",
        "640",
        "--contextdir",
        "/ctx",
        second,
        "/ctx/a",
        "/ctx/b/",
        "/srv/",
    ]
    assert calls[1] == [
        "buildah",
        "copy",
        "--quiet",
        "--chown",
        "1000:1000",
        "--from",
        first,
        second,
        "/out/bin",
        "/usr/bin/",
    ]
    assert calls[2] == ["buildah", "commit", "--quiet", first, image]
    # Newest first, each removed once; the temporary image too.
    assert calls[3:] == [
        ["buildah", "rm", second],
        ["buildah", "rm", first],
        ["buildah", "rmi", "--force", image],
    ]
    assert buildah.containers == []


def test_private_steps_share_one_namespace_with_a_user_mode_uplink_removed_at_cleanup(
    fake_run: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(network_module, "NETNS_DIR", tmp_path)
    buildah = Buildah(isolation="runc")
    for _ in range(2):
        buildah.run_in("c", ["true"], user=None, workdir=None, env={}, network=Network.PRIVATE, on_line=print)
    name = buildah.private_network.name
    namespace = str(tmp_path / name)
    assert fake_run.of("ip") == [["ip", "netns", "add", name]]
    assert fake_run.of("slirp4netns") == [
        [
            "slirp4netns", "--configure", "--mtu", "65520", "--disable-host-loopback", "--exit-fd", "90",
            "--ready-fd", "91", "--netns-type", "path", namespace, "tap0",
        ]
    ]  # fmt: skip
    runs = [call for call in fake_run.of("buildah") if "run" in call]
    assert all(call[call.index("--network") + 1] == f"ns:{namespace}" for call in runs)
    assert len(runs) == 2
    buildah.cleanup()
    assert fake_run.of("ip")[-1] == ["ip", "netns", "delete", name]


def test_namespaces_of_dead_dualbuild_processes_are_reclaimed(
    fake_run: FakeRun, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(network_module, "NETNS_DIR", tmp_path)
    dead = 2**22  # PIDs are below pid_max, which is at most 2**22: no such process
    for name in (f"dualbuild-{dead}-abcd1234", f"dualbuild-{os.getpid()}-abcd1234", "someone-else"):
        (tmp_path / name).touch()
    network_module.reclaim_stale()
    assert fake_run.of("ip") == [["ip", "netns", "delete", f"dualbuild-{dead}-abcd1234"]]


def test_chroot_is_never_chosen_by_the_probe(fake_run: FakeRun, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buildah_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    fake_run.answer("buildah", "version", stdout='{"version": "1.28.2"}')
    fake_run.answer("buildah", "from", stdout="probe-container\n")
    fake_run.answer("buildah", "run", returncode=1, tail="runc: error")
    with pytest.raises(BuildError, match="cannot run a contained command") as caught:
        Buildah().chosen_isolation()
    assert "--isolation chroot" in (caught.value.hint or "")
    tried = [call[call.index("--isolation") + 1 :][:3] for call in fake_run.of("buildah") if "run" in call]
    assert tried == [["oci", "--network", "host"], ["oci", "--runtime", "runc"]]


def test_a_remembered_chroot_choice_is_not_trusted(fake_run: FakeRun, tmp_path: Path) -> None:
    fake_run.answer("buildah", "version", stdout='{"version": "1.28.2"}')
    buildah = Buildah(cache_dir=tmp_path)
    (tmp_path / "isolation.json").write_text(json.dumps({"key": buildah._probe_key(), "isolation": "chroot"}))
    assert buildah._remembered_isolation() is None


def test_an_unknown_isolation_is_a_usage_error(fake_run: FakeRun) -> None:
    with pytest.raises(Exception, match="unknown isolation 'jail'") as caught:
        Buildah(isolation="jail")
    assert getattr(caught.value, "exit_code", None) == 2
    assert fake_run.calls == []


# --- tar -----------------------------------------------------------------------------------------


def tarball(path: Path, names: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(name)
            archive.addfile(info, io.BytesIO(name.encode()))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_tar_extracts_with_owners_modes_and_the_carried_xattrs_and_gets_every_checked_byte(
    fake_run: FakeRun, tmp_path: Path
) -> None:
    data = tarball(tmp_path / "rootfs.tar", ["etc/hostname", "bin/sh"])
    extract_checked(tmp_path / "rootfs.tar", tmp_path / "root", "rootfs tarball")
    assert fake_run.of("tar") == [
        [
            "tar",
            "--extract",
            "--file=-",
            "--read-full-records",
            f"--directory={tmp_path / 'root'}",
            "--preserve-permissions",
            "--same-owner",
            "--numeric-owner",
            "--warning=no-timestamp",
            "--xattrs",
            "--xattrs-include=security.capability",
            "--xattrs-include=user.*",
        ]
    ]
    assert fake_run.stdin == [data]


def test_tar_failing_is_a_build_error_with_its_output(fake_run: FakeRun, tmp_path: Path) -> None:
    tarball(tmp_path / "rootfs.tar", ["a"])
    fake_run.answer("tar", returncode=2, tail="tar: a: Cannot open: Permission denied")
    with pytest.raises(BuildError, match="extracting it failed\ntar: a: Cannot open"):
        extract_checked(tmp_path / "rootfs.tar", tmp_path, "rootfs tarball")


# --- mmdebstrap ----------------------------------------------------------------------------------


def test_mmdebstrap_writes_under_a_temporary_tar_name_then_the_base_is_cached(
    fake_run: FakeRun, tmp_path: Path
) -> None:
    def mmdebstrap(argv: list[str]) -> tuple[int, str, str]:
        Path(argv[-2]).write_bytes(b"a debian tarball")
        return 0, "", ""

    fake_run.answer("mmdebstrap", behaviour=mmdebstrap)
    base = BootstrapBase(packages=("passwd", "curl"), mirror="http://deb.example/debian")
    first = bases.bootstrap_tarball(base, Arch.ARM64, tmp_path, print)
    [argv] = fake_run.of("mmdebstrap")
    assert argv[:5] == [
        "mmdebstrap",
        "--variant=minbase",
        "--architectures=arm64",
        "--include=passwd,curl",
        "bookworm",
    ]
    assert argv[6] == "http://deb.example/debian"
    partial = Path(argv[5])
    assert partial.parent == first.parent
    assert partial.name.endswith(".tar")  # mmdebstrap picks the format from the name
    assert partial.name != first.name
    assert first.read_bytes() == b"a debian tarball"
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]
    assert bases.bootstrap_tarball(base, Arch.ARM64, tmp_path, print) == first
    assert len(fake_run.of("mmdebstrap")) == 1  # made once, then cached


def test_mmdebstrap_failing_leaves_no_tarball(fake_run: FakeRun, tmp_path: Path) -> None:
    def failing(argv: list[str]) -> tuple[int, str, str]:
        Path(argv[-1]).write_bytes(b"half")
        return 1, "", "E: cannot reach the mirror"

    fake_run.answer("mmdebstrap", behaviour=failing)
    with pytest.raises(BuildError, match=r"bootstrap debian bookworm .* failed"):
        bases.bootstrap_tarball(BootstrapBase(), Arch.AMD64, tmp_path, print)
    assert list((tmp_path / "bootstrap").iterdir()) == []


# --- gpg -----------------------------------------------------------------------------------------

DSA_KEY = "\n".join(
    [
        "sec:u:2048:17:ABCDEF0123456789:1700000000:::u:::scSC:::+:::23::0:",
        f"fpr:::::::::{FINGERPRINT}:",
        "grp:::::::::0123456789ABCDEF0123456789ABCDEF01234567:",
        "uid:u::::1700000000::HASH::Releases <r@example.com>::::::::::0:",
    ]
)


def test_a_key_is_checked_with_a_trial_signature_and_its_passphrase_never_reaches_argv(
    fake_run: FakeRun,
) -> None:
    fake_run.answer("gpg", "--list-secret-keys", stdout=DSA_KEY)
    key, warnings = check_signing_key("r@example.com", gnupghome=Path("/keys"), passphrase="horse battery")
    assert (key.fingerprint, key.algorithm, key.user_id, key.agent) == (
        FINGERPRINT,
        "DSA",
        "Releases <r@example.com>",
        None,
    )
    assert warnings == []
    listing, trial = fake_run.of("gpg")
    assert listing == [
        "gpg",
        "--batch",
        "--with-colons",
        "--with-keygrip",
        "--list-secret-keys",
        "--",
        "r@example.com",
    ]
    assert trial[:9] == ["gpg", *SIGN]
    assert trial[9:13] == ["--pinentry-mode", "loopback", "--passphrase-fd", "0"]
    assert not any("horse" in arg for call in fake_run.calls for arg in call)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ("sec:e:2048:1:AB:1:::u:::scSC:::+::", "is expired"),
        ("sec:r:2048:1:AB:1:::u:::scSC:::+::", "is revoked"),
        ("sec:u:2048:1:AB:1:::u:::eE:::+::", "cannot sign"),
    ],
)
def test_an_unusable_key_is_refused_before_anything_is_signed(
    fake_run: FakeRun, record: str, message: str
) -> None:
    fake_run.answer("gpg", "--list-secret-keys", stdout=f"{record}\nfpr:::::::::{FINGERPRINT}:")
    with pytest.raises(SigningError, match=message):
        check_signing_key("k")
    assert len(fake_run.calls) == 1


def test_an_unknown_key_says_where_it_looked(fake_run: FakeRun) -> None:
    fake_run.answer("gpg", "--list-secret-keys", returncode=2)
    with pytest.raises(SigningError, match=r"no secret key 'k' in the keyring \(/keys\)"):
        check_signing_key("k", gnupghome=Path("/keys"))


def test_the_sign_argv_without_a_passphrase_reads_the_data_from_a_file() -> None:
    key = SigningKey(selector="k", fingerprint=FINGERPRINT, algorithm="RSA", user_id="", gnupghome=None)
    argv, stdin = sign_argv(key, Path("/out/x.asc"), Path("/out/x.aci"))
    assert argv[1:] == [*SIGN, "--output", "/out/x.asc", "/out/x.aci"]
    assert stdin is None


def test_a_public_key_is_exported_alone_through_a_keyring_of_its_own(
    fake_run: FakeRun, tmp_path: Path
) -> None:
    armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc\n-----END PGP PUBLIC KEY BLOCK-----\n"
    fake_run.answer("gpg", "--export", stdout=armored)
    fake_run.answer("gpg", "--list-keys", stdout=f"pub:u:4096:1:AB:1:::u:::scSC:\nfpr:::::::::{FINGERPRINT}:")
    fake_run.answer("gpgconf")
    assert export_public_key(FINGERPRINT, tmp_path / "key.asc", gnupghome=Path("/keys")) == "RSA"
    assert (tmp_path / "key.asc").read_text() == armored
    export, load, listing, again = fake_run.of("gpg")
    assert export == ["gpg", "--batch", "--armor", "--export", FINGERPRINT]
    assert load[:4] == ["gpg", "--batch", "--quiet", "--import"]
    assert listing == ["gpg", "--batch", "--with-colons", "--list-keys", "--", FINGERPRINT]
    assert again == export
    assert fake_run.of("gpgconf") == [["gpgconf", "--kill", "all"]]  # the scratch keyring's agent


def test_a_key_missing_from_the_keyring_is_named_with_a_hint(fake_run: FakeRun, tmp_path: Path) -> None:
    with pytest.raises(SigningError, match=f"the signing key {FINGERPRINT} is not in the keyring") as caught:
        export_public_key(FINGERPRINT, tmp_path / "key.asc")
    assert caught.value.hint is not None
    assert "--public-key" in caught.value.hint
    assert not (tmp_path / "key.asc").exists()


# --- skopeo --------------------------------------------------------------------------------------


class FakeRegistry:
    """Manifests by reference, as skopeo inspect and copy see them."""

    def __init__(self, config_digest: str) -> None:
        self.manifest = json.dumps({"schemaVersion": 2, "config": {"digest": config_digest}})
        self.digest = "sha256:" + hashlib.sha256(self.manifest.encode()).hexdigest()
        self.held: dict[str, str] = {}

    def inspect(self, argv: list[str]) -> tuple[int, str, str]:
        reference = argv[-1].removeprefix("docker://")
        if reference in self.held:
            return 0, self.held[reference], ""
        return 1, "", 'time="x" level=fatal msg="reading manifest: manifest unknown"'

    def copy(self, argv: list[str]) -> tuple[int, str, str]:
        self.held[argv[-1].removeprefix("docker://")] = self.manifest
        if "--digestfile" in argv:
            Path(argv[argv.index("--digestfile") + 1]).write_text(self.digest)
        return 0, "", ""


def test_skopeo_pushes_the_version_then_copies_every_tag_by_digest_and_reads_each_back(
    fake_run: FakeRun, tmp_path: Path
) -> None:
    registry = FakeRegistry("sha256:config")
    fake_run.answer("skopeo", "inspect", behaviour=registry.inspect)
    fake_run.answer("skopeo", "copy", behaviour=registry.copy)
    build = _build(tmp_path, image_id="sha256:config")
    request = PublishRequest(
        recipe=tmp_path / "recipe.toml", tls_verify=False, retry=RetryPolicy(attempts=1, timeout=90)
    )
    plan = publish_docker.prepare(build, "reg.example/team/hello", request)
    pushed = publish_docker.push(plan)
    assert pushed.record.digest == registry.digest
    assert pushed.written == ("1.0.0", "latest")
    # Every skopeo command is bounded: a registry that never answers fails after the timeout.
    assert all(call[1:3] == ["--command-timeout", "90s"] for call in fake_run.of("skopeo"))
    calls = [[call[0], *call[3:]] for call in fake_run.of("skopeo")]
    archive = tmp_path / "hello-1.0.0-linux-amd64.docker.tar"
    assert calls[0] == [
        "skopeo",
        "inspect",
        "--raw",
        "--tls-verify=false",
        "docker://reg.example/team/hello:1.0.0",
    ]
    assert calls[1][:4] == ["skopeo", "copy", "--quiet", "--digestfile"]
    assert calls[1][5:] == [
        "--dest-tls-verify=false",
        f"docker-archive:{archive}",
        "docker://reg.example/team/hello:1.0.0",
    ]
    assert calls[4] == [
        "skopeo",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        f"docker://reg.example/team/hello@{registry.digest}",
        "docker://reg.example/team/hello:latest",
    ]
    # Every reference is read back after it is written.
    assert calls[2][-1] == calls[0][-1]
    assert calls[5][-1] == "docker://reg.example/team/hello:latest"


def test_another_image_under_the_version_is_not_replaced(fake_run: FakeRun, tmp_path: Path) -> None:
    registry = FakeRegistry("sha256:other")
    registry.held["reg.example/hello:1.0.0"] = registry.manifest
    fake_run.answer("skopeo", "inspect", behaviour=registry.inspect)
    request = PublishRequest(recipe=tmp_path / "recipe.toml", retry=RetryPolicy(attempts=1))
    with pytest.raises(Exception, match="already holds a different image") as caught:
        publish_docker.prepare(_build(tmp_path, image_id="sha256:config"), "reg.example/hello", request)
    assert getattr(caught.value, "exit_code", None) == 5
    assert [call[3] for call in fake_run.of("skopeo")] == ["inspect"]


def _build(directory: Path, *, image_id: str) -> Build:
    recipe_file = directory / "recipe.toml"
    recipe_file.write_text(
        '[image]\nname = "example.com/hello"\nversion = "1.0.0"\ntags = ["latest"]\narch = "amd64"\n'
        '[[stages]]\nfrom = "scratch"\n'
    )
    return report_of(recipe_file, directory, image_id=image_id)


def test_kept_trees_are_labelled_and_prune_finds_the_ones_that_lost_their_name(
    fake_run: FakeRun, tmp_path: Path
) -> None:
    buildah = Buildah()
    buildah.commit_as("c1", cache_image("k1"), tree_digest="d1")
    buildah.commit_as("c1", cache_image("k2"), tree_digest="d2")
    labels = ["--label", "io.dualbuild.kept=true", "--label"]
    assert [call[1:] for call in fake_run.of("buildah")] == [
        ["config", *labels, "io.dualbuild.tree=d1", "c1"],
        ["commit", "--quiet", "c1", "localhost/dualbuild-cache:k1"],
        ["config", *labels, "io.dualbuild.tree=d2", "c1"],  # each tree its own digest
        ["commit", "--quiet", "c1", "localhost/dualbuild-cache:k2"],
    ]
    fake_run.answer("buildah", "inspect", stdout=json.dumps({"OCIv1": {"config": {"Labels": {"a": "b"}}}}))
    assert buildah.label("a", container="c2") == "b"
    assert buildah.label("io.dualbuild.tree", container="c2") is None
    assert fake_run.of("buildah")[-1][1:] == ["inspect", "--type", "container", "c2"]
    fake_run.calls.clear()
    named = [{"id": "named", "names": ["localhost/dualbuild-cache:k1"], "created": 1}]
    lost = [{"id": "lost", "names": None, "created": 2}]  # another build committed k1 after it
    fake_run.answer("buildah", "images", "reference=localhost/dualbuild-cache", stdout=json.dumps(named))
    fake_run.answer(
        "buildah", "images", "dangling=true", "label=io.dualbuild.kept=true", stdout=json.dumps(lost)
    )
    removed = prune(tmp_path, buildah=buildah, scratch=[])
    assert [entry.image_id for entry in removed] == ["named", "lost"]
    assert [call[1:] for call in fake_run.of("buildah") if call[1] == "rmi"] == [
        ["rmi", "localhost/dualbuild-cache:k1"],
        ["rmi", "lost"],
    ]


@pytest.mark.parametrize(
    ("isolation", "network", "mounted"),
    [
        ("runc", Network.PRIVATE, True),
        ("runc", Network.HOST, True),
        ("runc", Network.NONE, False),
        ("oci", Network.NONE, False),
        # chroot runs buildah in `unshare --net`: buildah sets up (and mounts) its default network.
        ("chroot", Network.NONE, True),
    ],
)
def test_hosts_and_resolv_conf_are_mount_targets_only_with_a_network(
    isolation: str, network: Network, mounted: bool
) -> None:
    targets = Buildah(isolation=isolation).mount_targets(network)
    assert {"etc/hostname", "dev", "proc", "sys", "run"} <= set(targets)
    assert ("etc/resolv.conf" in targets, "etc/hosts" in targets) == (mounted, mounted)


def test_an_image_buildah_left_half_written_is_removed_and_the_listing_asked_again(
    fake_run: FakeRun,
) -> None:
    broken = "878cb78bd9a57bff3e57df6d78b35e841cd32a5bda4f0b5beb832087ff561403"
    listings = iter(
        [
            (
                125,
                "",
                f'Error: locating item named "manifest" for image with ID "{broken}": file does not exist',
            ),
            (0, '[{"id": "abc", "names": ["localhost/dualbuild-cache:k"]}]', ""),
        ]
    )
    fake_run.answer("buildah", "images", behaviour=lambda _argv: next(listings))
    images = Buildah().list_images("localhost/dualbuild-cache")
    assert [image["id"] for image in images] == ["abc"]
    assert ["buildah", "rmi", "--force", broken] in fake_run.of("buildah")
    # A failure that is no half-written image is an error, as before.
    fake_run.answer("buildah", "images", returncode=125, tail="Error: the store is locked")
    with pytest.raises(CommandError):
        Buildah().list_images("localhost/dualbuild-cache")


def test_commands_an_interrupt_must_not_cut_short_are_shielded(fake_run: FakeRun) -> None:
    # A commit, a mount or an rm killed half-way leaves the store with a mount or an image record
    # no later command cleans up: an interrupt waits for them.
    buildah = Buildah()
    fake_run.answer("buildah", "from", stdout="dualbuild-1-x-0-stage\n")
    fake_run.answer("buildah", "mount", stdout="/var/lib/containers/storage/overlay/x/merged\n")
    container = buildah.new_container("scratch", label="stage")
    buildah.mount(container)
    buildah.remove_container(container)
    shielded = [[os.path.basename(argv[0]), *argv[1:]] for argv in fake_run.shielded]
    assert [argv[1] for argv in shielded if argv[0] == "buildah"] == ["from", "mount", "rm"]
