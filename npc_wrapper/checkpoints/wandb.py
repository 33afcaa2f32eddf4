"""``wandb://`` checkpoints: resolve artifacts through the public W&B API and cache them by digest.

All contact with W&B goes through :class:`WandbSource` (``wandb.Api()`` is created lazily, or
passed in as ``api=``). Downloads land in ``<cache_dir>/<digest>/`` and an index file
``<cache_dir>/index.json`` maps every URI that was resolved (``entity/project/name:v3``,
``...:latest``) and every collection that was listed to artifact digests, so that:

* a second run finds the files by digest and does not download again;
* a pinned version (``:vN``) already in the cache loads without contacting W&B at all;
* when W&B cannot be reached (offline, not logged in), aliases and collection listings resolve
  from the index, with a warning saying how old the resolution is.

When neither W&B nor the cache can answer, the error names the URI and what to do
(``wandb login``, ``WANDB_API_KEY``, or a ``file://`` path); nothing falls back silently.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npc_wrapper.checkpoints.bounded import read_json_file
from npc_wrapper.errors import (
    CheckpointError,
    WandbError,
    WandbNotFoundError,
    WandbUnavailableError,
    shorten,
)

__all__ = [
    "ArtifactVersion",
    "WandbSource",
    "WandbURI",
    "default_cache_dir",
    "parse_wandb_uri",
]

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"^v(\d+)$")
_PART = re.compile(r"^[\w.\-]+$")
_INDEX = "index.json"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/npc_wrapper/wandb`` (``~/.cache/npc_wrapper/wandb`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "npc_wrapper" / "wandb"


@dataclass(frozen=True)
class WandbURI:
    """A parsed ``wandb://entity/project/[type/]name[:version]``.

    :param version: ``"vN"``, an alias such as ``"latest"``, or ``None`` (latest)
    """

    entity: str
    project: str
    name: str
    type: str | None = None
    version: str | None = None

    @property
    def collection(self) -> str:
        """``entity/project/name``: what ``wandb.Api().artifacts`` lists."""
        return f"{self.entity}/{self.project}/{self.name}"

    @property
    def qualified(self) -> str:
        """``entity/project/name:version`` (``latest`` when no version is given)."""
        return f"{self.collection}:{self.version or 'latest'}"

    @property
    def pinned(self) -> bool:
        """Whether the version is a fixed ``vN`` (its content never changes)."""
        return self.version is not None and _VERSION.match(self.version) is not None

    def __str__(self) -> str:
        kind = f"{self.type}/" if self.type else ""
        version = f":{self.version}" if self.version else ""
        return f"wandb://{self.entity}/{self.project}/{kind}{self.name}{version}"


def parse_wandb_uri(uri: str) -> WandbURI:
    """Parse ``wandb://entity/project/type/name:version`` or ``wandb://entity/project/name:version``.

    :raises WandbError: the URI does not have one of those forms
    """
    forms = "wandb://entity/project/type/name:version or wandb://entity/project/name[:version]"
    quoted = repr(shorten(uri))
    if not uri.startswith("wandb://"):
        raise WandbError(f"{quoted} is not a wandb URI; expected {forms}")
    parts = uri[len("wandb://") :].strip("/").split("/")
    if len(parts) not in (3, 4) or not all(parts):
        raise WandbError(
            f"cannot parse {quoted}: expected {forms} (version is vN, an alias such as latest, or absent)"
        )
    last = parts[-1]
    name, sep, version = last.partition(":")
    if sep and not version:
        raise WandbError(
            f"cannot parse {quoted}: empty version after ':'; use :vN, an alias such as :latest, or drop it"
        )
    entity, project = parts[0], parts[1]
    art_type = parts[2] if len(parts) == 4 else None
    for label, value in (
        ("entity", entity),
        ("project", project),
        ("type", art_type),
        ("name", name),
        ("version", version or None),
    ):
        if value is not None and not _PART.match(value):
            raise WandbError(
                f"cannot parse {quoted}: {label} {shorten(value)!r} has characters W&B does not allow; expected "
                f"{forms}"
            )
    return WandbURI(entity, project, name, art_type, version or None)


@dataclass
class ArtifactVersion:
    """One version of a W&B artifact, from the API or from the cache index.

    :param name: ``name:vN``, used as the NPC's name in episode infos
    :param version: ``N`` of ``vN``
    :param digest: the artifact's content digest (the cache key)
    :param metadata: the artifact's metadata (what ``top`` sorts by)
    """

    uri: WandbURI
    name: str
    version: int | None
    digest: str
    type: str | None
    metadata: dict[str, Any]
    aliases: list[str] = field(default_factory=list)
    #: The live ``wandb`` artifact (``None`` when resolved from the cache index).
    artifact: Any = None

    @property
    def pinned_uri(self) -> WandbURI:
        """The URI of exactly this version."""
        version = f"v{self.version}" if self.version is not None else self.uri.version
        return WandbURI(self.uri.entity, self.uri.project, self.uri.name, self.type or self.uri.type, version)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _digest_dirname(digest: str) -> str:
    """A safe directory name for a digest (W&B digests are hex; anything else is hashed)."""
    if re.fullmatch(r"[A-Za-z0-9_\-]{1,128}", digest):
        return digest
    return "sha256-" + hashlib.sha256(digest.encode()).hexdigest()


def _describe_exc(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _is_not_found(e: BaseException) -> bool:
    text = str(e).lower()
    # wandb reports a uri's wrong artifact type as "type 'x' specified but this artifact is of type 'y'".
    answers = ("not found", "does not exist", "could not find", "no such", "specified but this artifact")
    return any(s in text for s in answers)


class WandbSource:
    """Resolve and download ``wandb://`` checkpoints, with a digest-keyed local cache.

    :param cache_dir: where artifacts are downloaded (default: :func:`default_cache_dir`)
    :param api: a ``wandb.Api``-like object; by default ``wandb.Api()`` is created on first use
    :param api_factory: called to create the API instead of ``wandb.Api`` (for custom settings)
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        api: Any = None,
        api_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self._api = api
        self._api_factory = api_factory

    # ------------------------------------------------------------------ the W&B boundary
    def api(self) -> Any:
        """The ``wandb.Api`` (created on first use; creation fails without credentials)."""
        if self._api is None:
            if self._api_factory is not None:
                self._api = self._api_factory()
            else:
                import wandb

                self._api = wandb.Api()
        return self._api

    def _call(self, what: WandbURI, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(api)``; W&B failures become :class:`WandbNotFoundError` or ``_Unreachable``."""
        try:
            return fn(self.api())
        except WandbError:
            raise
        except (
            Exception
        ) as e:  # the wandb client raises many types (CommError, UsageError, requests errors...)
            if _is_not_found(e) and not isinstance(e, (ConnectionError, TimeoutError)):
                raise WandbNotFoundError(
                    f"W&B has no artifact for {what}: {_describe_exc(e)}. Check the entity, project, "
                    "artifact name, type and version (vN or an alias such as latest) in the uri"
                ) from e
            raise _Unreachable(e) from e

    # ------------------------------------------------------------------ index
    @property
    def index_path(self) -> Path:
        return self.cache_dir / _INDEX

    def _read_index(self) -> dict[str, Any]:
        try:
            index = read_json_file(self.index_path, "the wandb cache index") if self.index_path.exists() else {}
        except CheckpointError as e:  # corrupt, too large or too deep: the next resolution rewrites it
            logger.warning("ignoring the unreadable wandb cache index (%s); it will be rebuilt", e)
            index = {}
        if not isinstance(index, dict):
            index = {}
        for key in ("artifacts", "refs", "collections"):
            if not isinstance(index.get(key), dict):
                index[key] = {}
        return index

    def _update_index(self, update: Callable[[dict[str, Any]], None]) -> None:
        """Re-read, update and atomically replace the index (concurrent runs lose at most an entry)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        index = self._read_index()
        update(index)
        fd, tmp = tempfile.mkstemp(prefix=".index-", suffix=".json", dir=self.cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(index, f, indent=1, sort_keys=True, default=str)
            os.replace(tmp, self.index_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @staticmethod
    def _record(index: dict[str, Any], av: ArtifactVersion) -> None:
        index["artifacts"][av.digest] = {
            "collection": av.uri.collection,
            "name": av.name,
            "version": av.version,
            "type": av.type,
            "metadata": av.metadata,
            "aliases": av.aliases,
            "dir": _digest_dirname(av.digest),
        }

    def _from_index(self, index: dict[str, Any], uri: WandbURI, digest: str) -> ArtifactVersion | None:
        entry = index["artifacts"].get(digest)
        if not isinstance(entry, dict):
            return None
        return ArtifactVersion(
            uri=uri,
            name=str(entry.get("name")),
            version=entry.get("version"),
            digest=digest,
            type=entry.get("type"),
            metadata=dict(entry.get("metadata") or {}),
            aliases=list(entry.get("aliases") or []),
        )

    def cached_dir(self, digest: str) -> Path | None:
        """The local directory of a downloaded artifact, or ``None`` if it is not in the cache."""
        path = self.cache_dir / _digest_dirname(digest)
        return path if path.is_dir() else None

    def _cached_hint(self, uri: WandbURI) -> str:
        """``file://`` paths of cached versions of ``uri``'s collection, for error messages."""
        index = self._read_index()
        hits = []
        for digest, entry in index["artifacts"].items():
            if isinstance(entry, dict) and entry.get("collection") == uri.collection:
                path = self.cached_dir(digest)
                if path is not None:
                    hits.append(f"{entry.get('name')}: file://{path}")
        return f" Cached versions of this artifact: {'; '.join(sorted(hits))}." if hits else ""

    def _unavailable(self, uri: WandbURI, e: BaseException, what: str) -> WandbUnavailableError:
        if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == "wandb":
            return WandbUnavailableError(
                f"cannot {what} {uri}: the wandb package is not installed "
                "(pip install 'npc-wrapper[wandb]'), or point the uri at a local copy with file://PATH; "
                "NPC checkpoints are never skipped "
                f"silently.{self._cached_hint(uri)}"
            )
        return WandbUnavailableError(
            f"cannot {what} {uri}: W&B could not be reached or did not accept the credentials "
            f"({_describe_exc(e)}). Log in with `wandb login` or set the WANDB_API_KEY environment variable "
            "(and check the network), or point the uri at a local copy with file://PATH; NPC checkpoints "
            f"are never skipped silently.{self._cached_hint(uri)}"
        )

    # ------------------------------------------------------------------ resolution
    def _version_of(self, uri: WandbURI, art: Any) -> ArtifactVersion:
        version_str = str(getattr(art, "version", "") or "")
        m = _VERSION.match(version_str)
        version = int(m.group(1)) if m else None
        base = uri.name
        return ArtifactVersion(
            uri=WandbURI(uri.entity, uri.project, uri.name, uri.type, None),
            name=f"{base}:v{version}" if version is not None else str(getattr(art, "name", base)),
            version=version,
            digest=str(art.digest),
            type=getattr(art, "type", None) or uri.type,
            metadata=dict(getattr(art, "metadata", None) or {}),
            aliases=[str(a) for a in (getattr(art, "aliases", None) or [])],
            artifact=art,
        )

    def resolve(self, uri: WandbURI) -> ArtifactVersion:
        """The one version ``uri`` names (``vN``, an alias, or latest when absent).

        A pinned ``vN`` already downloaded is answered from the cache without contacting W&B.
        Otherwise W&B is asked; when it cannot be reached, the index's last resolution is used.
        """
        ref = uri.qualified
        index = self._read_index()
        entry = index["refs"].get(ref)
        if uri.pinned and isinstance(entry, dict) and self.cached_dir(str(entry.get("digest"))) is not None:
            av = self._from_index(index, uri, str(entry["digest"]))
            if av is not None:
                logger.info("wandb: %s is cached (digest %s); not contacting W&B", uri, av.digest)
                return av
        try:
            art = self._call(uri, lambda api: api.artifact(ref, type=uri.type))
        except _Unreachable as e:
            if isinstance(entry, dict):
                av = self._from_index(index, uri, str(entry.get("digest")))
                if av is not None:
                    logger.warning(
                        "wandb: could not reach W&B (%s); using the cached resolution of %s -> %s (digest "
                        "%s) from %s",
                        _describe_exc(e.error),
                        uri,
                        av.name,
                        av.digest,
                        entry.get("resolved_at"),
                    )
                    return av
            raise self._unavailable(uri, e.error, "resolve") from e.error
        av = self._version_of(uri, art)

        def update(index: dict[str, Any]) -> None:
            self._record(index, av)
            index["refs"][ref] = {"digest": av.digest, "resolved_at": _now()}
            if av.version is not None:
                index["refs"][f"{uri.collection}:v{av.version}"] = {
                    "digest": av.digest,
                    "resolved_at": _now(),
                }

        self._update_index(update)
        return av

    def list_versions(self, uri: WandbURI) -> list[ArtifactVersion]:
        """Every version of ``uri``'s collection (for the ``latest``/``top``/``rand``/``all`` selectors).

        When W&B cannot be reached, the collection's last listing from the index is used.
        """

        def fetch(api: Any) -> tuple[str, list[Any]]:
            art_type = uri.type or api.artifact(f"{uri.collection}:latest").type
            return art_type, list(api.artifacts(art_type, uri.collection))

        try:
            art_type, arts = self._call(uri, fetch)
        except _Unreachable as e:
            index = self._read_index()
            listing = index["collections"].get(uri.collection)
            if isinstance(listing, dict):
                found = [self._from_index(index, uri, str(d)) for d in listing.get("digests", [])]
                versions = [av for av in found if av is not None]
                logger.warning(
                    "wandb: could not reach W&B (%s); using the cached listing of %s (%d versions) from %s",
                    _describe_exc(e.error),
                    uri.collection,
                    len(versions),
                    listing.get("listed_at"),
                )
                return versions
            raise self._unavailable(uri, e.error, "list the versions of") from e.error
        typed = WandbURI(uri.entity, uri.project, uri.name, art_type, None)
        versions = [self._version_of(typed, art) for art in arts]
        if not versions:
            raise WandbNotFoundError(f"W&B lists no versions of {typed} (type {art_type!r})")

        def update(index: dict[str, Any]) -> None:
            for av in versions:
                self._record(index, av)
                if av.version is not None:
                    index["refs"][f"{uri.collection}:v{av.version}"] = {
                        "digest": av.digest,
                        "resolved_at": _now(),
                    }
            index["collections"][uri.collection] = {
                "digests": [av.digest for av in versions],
                "type": art_type,
                "listed_at": _now(),
            }

        self._update_index(update)
        return versions

    # ------------------------------------------------------------------ download
    def fetch(self, av: ArtifactVersion) -> Path:
        """The local directory holding ``av``'s files, downloading it once (keyed by digest).

        The download goes to a temporary directory that is renamed into place only when complete,
        so an interrupted download is never mistaken for a cached artifact.
        """
        cached = self.cached_dir(av.digest)
        if cached is not None:
            logger.info("wandb: %s found in the cache at %s (digest %s)", av.name, cached, av.digest)
            return cached
        if av.artifact is None:
            raise WandbUnavailableError(
                f"{av.pinned_uri} (digest {av.digest}) is not in the cache at {self.cache_dir} and W&B could "
                "not be reached to download it; log in with `wandb login` or set WANDB_API_KEY, or use a "
                "file:// path"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        final = self.cache_dir / _digest_dirname(av.digest)
        tmp = Path(tempfile.mkdtemp(prefix=f".download-{final.name}-", dir=self.cache_dir))
        try:
            logger.info("wandb: downloading %s (digest %s) to %s", av.pinned_uri, av.digest, final)
            try:
                av.artifact.download(root=str(tmp))
            except Exception as e:  # network failures mid-download, quota, permissions
                raise WandbUnavailableError(
                    f"downloading {av.pinned_uri} failed ({_describe_exc(e)}); nothing was loaded. Check the "
                    "network and your W&B login (`wandb login` / WANDB_API_KEY), or use a file:// path"
                ) from e
            if not any(p.is_file() for p in tmp.rglob("*")):
                raise WandbError(f"the download of {av.pinned_uri} holds no files")
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():  # another run finished the same download first otherwise
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

        def update(index: dict[str, Any]) -> None:
            self._record(index, av)

        self._update_index(update)
        return final


class _Unreachable(Exception):
    """Internal: W&B failed for a reason other than 'not found' (network, auth, server)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
