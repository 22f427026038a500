"""Where an ACI discovery site lives: a directory, or an http(s) URL that takes PUT and DELETE.

Both behave alike for publish: read a file, write one atomically, remove one; a directory can
also hold symbolic links (a tag's files link to its version's, served without a copy), and
follows none planted inside it (dualbuild.publish.dirsite). HTTP requests are retried on
transient failures (5xx, resets), never follow redirects (so credentials are not sent
elsewhere), and take basic-auth credentials from the environment or netrc.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import netrc
import os
import re
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from dualbuild import __version__
from dualbuild.errors import UsageError
from dualbuild.log import log
from dualbuild.publish.dirsite import DirSite as DirSite  # one of the two kinds open_site gives
from dualbuild.publish.retry import RetryPolicy, with_retries

USER_ENV = "DUALBUILD_ACI_USER"
PASSWORD_ENV = "DUALBUILD_ACI_PASSWORD"
TIMEOUT = 60.0
TRANSIENT_STATUS = (429, 500, 502, 503, 504)


class Site(Protocol):
    """Where the site's files live; paths are relative to its root, with '/'."""

    @property
    def location(self) -> str:
        """The destination as the user gave it (never with credentials)."""

    def fetch(self, path: str, dest: Path) -> bool:
        """Copy the file at ``path`` to ``dest``; False when there is none."""

    def put(self, path: str, source: Path, content_type: str) -> None:
        """Write ``source`` at ``path``, replacing what is there."""

    def delete(self, path: str) -> None:
        """Remove ``path`` (no error when it is already gone)."""

    def prune(self) -> None:
        """After a rollback: remove what ``put`` created besides files (empty directories)."""

    @property
    def links(self) -> bool:
        """True when a path can be a symbolic link to another file of the site."""

    def symlink(self, path: str, text: str) -> None:
        """Make ``path`` a symbolic link reading ``text`` (relative to its directory), replacing it."""

    def readlink(self, path: str) -> str | None:
        """What the symbolic link at ``path`` reads; None when ``path`` is not one."""


class HttpStatusError(Exception):
    """The server answered with an error status."""

    def __init__(self, method: str, url: str, code: int, reason: str) -> None:
        super().__init__(f"{method} {url}: HTTP {code} {reason}")
        self.code = code
        self.reason = reason


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Following a redirect would resend the Authorization header to wherever it points.
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


class HttpSite:
    """A web server that takes PUT and DELETE (WebDAV, nginx dav_methods, an upload service)."""

    def __init__(
        self, base: str, *, credentials: tuple[str, str] | None, tls_verify: bool, retry: RetryPolicy
    ) -> None:
        self.base = base.rstrip("/") + "/"
        self.retry = retry
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if not tls_verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)
        self._headers = {"User-Agent": f"dualbuild/{__version__}"}
        if credentials is not None:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def __repr__(self) -> str:
        # Never show the Authorization header, not even in a debug dump.
        return f"HttpSite({self.base!r})"

    @property
    def location(self) -> str:
        """The base URL."""
        return self.base

    def fetch(self, path: str, dest: Path) -> bool:
        """GET ``path`` into ``dest``; False on 404/410."""
        return self._send("GET", path, dest=dest)

    def put(self, path: str, source: Path, content_type: str) -> None:
        """PUT ``source`` at ``path`` (the server creates missing parent collections)."""
        self._send("PUT", path, source=source, content_type=content_type)

    def delete(self, path: str) -> None:
        """DELETE ``path``; a 404 is fine."""
        self._send("DELETE", path)

    def prune(self) -> None:
        """Nothing: a PUT server owns its collections."""

    @property
    def links(self) -> bool:
        """PUT carries bytes only: a tag is a copy of its version."""
        return False

    def symlink(self, path: str, text: str) -> None:
        """Never called: :attr:`links` is False."""
        raise NotImplementedError(f"an HTTP site cannot hold a link ({path} -> {text})")

    def readlink(self, path: str) -> str | None:  # noqa: ARG002 - over HTTP every path is a file
        """None: over HTTP no path is a link."""
        return None

    def _send(
        self, method: str, path: str, *, source: Path | None = None, dest: Path | None = None,
        content_type: str | None = None,
    ) -> bool:  # fmt: skip
        url = self.base + urllib.parse.quote(path)

        def attempt() -> bool:
            headers = dict(self._headers)
            body = None
            if source is not None:
                headers["Content-Length"] = str(source.stat().st_size)
                headers["Content-Type"] = content_type or "application/octet-stream"
                # Opened per attempt: a retry sends the body again from its start.
                body = source.open("rb")
            try:
                request = urllib.request.Request(url, data=body, method=method, headers=headers)
                try:
                    response = self._opener.open(request, timeout=TIMEOUT)
                except urllib.error.HTTPError as error:
                    error.close()
                    if error.code in (404, 410) and method in ("GET", "DELETE"):
                        return False
                    raise HttpStatusError(method, url, error.code, str(error.reason)) from None
                with response:
                    if dest is not None:
                        with dest.open("wb") as out:
                            shutil.copyfileobj(response, out)
                    else:
                        response.read()
            finally:
                if body is not None:
                    body.close()
            return True

        try:
            return with_retries(f"{method} {url}", attempt, policy=self.retry, transient=_transient)
        except HttpStatusError as error:
            why = _STATUS_HINTS.get(error.code)
            if why is None:
                raise
            raise HttpStatusError(method, url, error.code, f"{error.reason} ({why})") from None


_STATUS_HINTS = {
    401: f"credentials come from ${USER_ENV} and ${PASSWORD_ENV}, or ~/.netrc",
    403: f"the credentials from ${USER_ENV} and ${PASSWORD_ENV}, or ~/.netrc, may not write there",
    405: "the site must take PUT and DELETE (WebDAV, nginx dav_methods) or be a directory",
    501: "the site must take PUT and DELETE (WebDAV, nginx dav_methods) or be a directory",
}


def _transient(error: Exception) -> bool:
    if isinstance(error, HttpStatusError):
        return error.code in TRANSIENT_STATUS
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, Exception):
        return _transient(error.reason)
    # Reset, refused, aborted connections and broken pipes are all ConnectionError.
    return isinstance(
        error, (ConnectionError, TimeoutError, http.client.IncompleteRead, http.client.BadStatusLine)
    )


def open_site(dest: str, *, environ: Mapping[str, str], tls_verify: bool, retry: RetryPolicy) -> Site:
    """The site at ``dest``: an http(s) URL (PUT) or a directory.

    Credentials for a URL come from $DUALBUILD_ACI_USER and $DUALBUILD_ACI_PASSWORD in
    ``environ``, else the netrc file ($NETRC or ~/.netrc).

    Raises:
        UsageError: the URL carries credentials or an unknown scheme; incomplete credentials.
    """
    if not dest.startswith(("http://", "https://")):
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", dest):
            raise UsageError(f"{dest!r}: only directories and http(s) URLs can hold an ACI site")
        return DirSite(Path(dest).absolute())
    parts = urllib.parse.urlsplit(dest)
    if parts.username or parts.password:
        raise UsageError(
            "the ACI destination URL carries credentials, which would end up in logs",
            hint=f"set ${USER_ENV} and ${PASSWORD_ENV}, or put them in ~/.netrc",
        )
    if parts.query or parts.fragment or not parts.hostname:
        raise UsageError(f"{dest!r} is not a usable site URL (no query or fragment)")
    credentials = _credentials(parts.hostname, environ)
    if credentials is not None and parts.scheme == "http" and not _is_loopback(parts.hostname):
        log.warning("sending the ACI site password over plain http to %s", parts.hostname)
    return HttpSite(dest, credentials=credentials, tls_verify=tls_verify, retry=retry)


def _credentials(host: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    user, password = environ.get(USER_ENV), environ.get(PASSWORD_ENV)
    if user or password:
        if not (user and password):
            raise UsageError(f"set both ${USER_ENV} and ${PASSWORD_ENV}, or neither")
        return user, password
    path = Path(environ["NETRC"]) if environ.get("NETRC") else Path.home() / ".netrc"
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(os.fspath(path)).authenticators(host)
    except netrc.NetrcParseError as error:
        # The parser's message may quote a token of the file, i.e. a password: leave it out.
        raise UsageError(f"cannot parse {path} (line {error.lineno})") from None
    if entry is None or not entry[2]:
        return None
    return entry[0], entry[2]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
