"""serve's download handlers: a user's repository list, bundles, zips, parts, gists, release
lists and assets, each a store key checked from the path (web/downloads.py sends them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from bulkbackup.archive import layout
from bulkbackup.names import is_archive_name, is_login, is_repo_name
from bulkbackup.store import Store
from bulkbackup.web import downloads

_T = TypeVar("_T")


class SiteParts(Protocol):
    """What the handlers need of serve's Site (web/app.py)."""

    async def spelled(self, login: str) -> str: ...
    async def live_store(self) -> Store: ...
    async def blocking(self, fn: Callable[..., _T], *args: Any) -> _T: ...


class DownloadRoutes:
    def __init__(self, site: SiteParts, redirect: bool, ended: Callable[[], None]) -> None:
        self.spelled: Callable[[str], Awaitable[str]] = site.spelled
        self.live_store = site.live_store
        self.blocking = site.blocking
        self.redirect = redirect  # serve.redirect_downloads
        self.ended = ended  # called when a download's body is sent or abandoned

    async def user_object(self, request: Request) -> Response:
        login = await self.spelled(request.path_params["login"])
        store = await self.live_store()
        head = await self.blocking(store.head, login)
        if head is None:
            raise HTTPException(404)
        return await self.blocking(downloads.respond_json, request, store, login, head)

    async def download(self, request: Request) -> Response:
        login, file = request.path_params["login"], request.path_params["file"]
        if file == layout.GISTS_LIST and is_login(login):  # the gist list
            return await self._serve_object(request, layout.gists_key(await self.spelled(login)),
                                            "gists")
        listed = file.removesuffix(layout.RELEASES_LIST_SUFFIX)
        if listed != file and is_login(login) and is_repo_name(listed):  # a release list
            key = layout.releases_key(await self.spelled(login), listed)
            return await self._serve_object(request, key, "releases")
        repo, dot, kind = file.rpartition(".")
        if not dot or kind not in downloads.KINDS or not is_login(login) \
                or not is_archive_name(repo):
            raise HTTPException(404)
        login = await self.spelled(login)
        key = layout.bundle_key(login, repo) if kind == "bundle" else layout.zip_key(login, repo)
        return await self._serve_object(request, key, kind)

    async def download_gist(self, request: Request) -> Response:
        """A gist's bundle, zip or part: `gists/<id>.bundle`, `.zip`, `.bundle.d/<c>/<s>`."""
        login, rest = request.path_params["login"], request.path_params["rest"]
        key = layout.parse_key(f"{login}/{layout.gists_work_folder()}/{rest}")
        if not is_login(login) or layout.gist_of(key.repo) is None:
            raise HTTPException(404)
        login = await self.spelled(login)
        found = {layout.Kind.BUNDLE: (layout.bundle_key, "bundle"),
                 layout.Kind.ZIP: (layout.zip_key, "zip")}.get(key.kind)
        if found is not None:
            return await self._serve_object(request, found[0](login, key.repo), found[1])
        part = layout.part_key(login, key.repo, key.chain, key.seq)
        return await self._serve_object(request, part, "bundle")

    async def download_part(self, request: Request) -> Response:
        """An increment (or a kept chain's full bundle): `<repo>.bundle.d/<chain>/<seq>.bundle`;
        or a release asset, `<repo>.releases/<tag>/<name>`."""
        params = request.path_params
        key = layout.parse_key("/".join((params["login"], params["folder"], params["chain"],
                                         params["part"])))
        if key.kind is layout.Kind.ASSET and is_login(key.login) and is_repo_name(key.repo):
            asset = layout.asset_key(await self.spelled(key.login), key.repo, key.tag,
                                     key.asset)
            return await self._serve_object(request, asset, "asset")
        if key.kind is not layout.Kind.PART or not is_login(key.login) \
                or not is_archive_name(key.repo):
            raise HTTPException(404)
        part = layout.part_key(await self.spelled(key.login), key.repo, key.chain, key.seq)
        return await self._serve_object(request, part, "bundle")

    async def _serve_object(self, request: Request, key: str, kind: str) -> Response:
        store = await self.live_store()
        head = await self.blocking(store.head, key)
        if head is None or head.size == 0:  # a zero-byte bundle means "no archive"
            raise HTTPException(404)
        return await self.blocking(downloads.respond, request, store, key, kind, head,
                                   self.redirect, self.ended)
