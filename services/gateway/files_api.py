"""REST routes for an assistant's knowledge files (owner only; anyone else gets 404).

Uploads are multipart (`file` field). The body is read through a counting limit, so an
oversized upload is refused (413) after at most the limit's bytes, whatever its headers say;
nothing is stored unless every limit passes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import UploadFile
from starlette.types import Message

from services.gateway.context import Gateway, gateway_dependency
from services.knowledge.service import (
    EmptyFile,
    FileNotFound,
    FileTooLarge,
    KnowledgeError,
    QuotaExceeded,
    TooManyFiles,
    UnsupportedFileType,
)
from shared.security import CurrentPrincipal

MULTIPART_OVERHEAD_BYTES = 64 * 1024
"""Room for the multipart boundaries and part headers around the file itself."""

GatewayDep = Annotated[Gateway, Depends(gateway_dependency)]

router = APIRouter()

_STATUS_OF_ERROR: dict[type[KnowledgeError], int] = {
    FileNotFound: status.HTTP_404_NOT_FOUND,
    UnsupportedFileType: status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    FileTooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    TooManyFiles: status.HTTP_409_CONFLICT,
    QuotaExceeded: status.HTTP_422_UNPROCESSABLE_CONTENT,
    EmptyFile: status.HTTP_422_UNPROCESSABLE_CONTENT,
}


def is_upload_path(path: str) -> bool:
    """Requests the gateway's general body limit leaves to the upload route's own limit."""
    return path.startswith("/assistants/") and path.rstrip("/").endswith("/files")


def install_error_handlers(app: FastAPI) -> None:
    async def knowledge_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, KnowledgeError)
        return JSONResponse(
            {"detail": exc.message},
            status_code=_STATUS_OF_ERROR.get(type(exc), status.HTTP_400_BAD_REQUEST),
        )

    app.add_exception_handler(KnowledgeError, knowledge_error)


class FileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    assistant_id: str
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    status: str
    failure_reason: str | None
    failure_message: str | None
    chunk_count: int | None
    char_count: int | None
    page_count: int | None
    language: str | None
    created_at: datetime
    processed_at: datetime | None


class FilePage(BaseModel):
    items: list[FileOut]
    total: int
    skip: int
    limit: int


async def _read_upload(request: Request, max_file_bytes: int) -> tuple[str | None, bytes]:
    """The uploaded file's name and bytes, reading at most the limit plus multipart overhead."""
    declared = request.headers.get("content-length")
    budget = max_file_bytes + MULTIPART_OVERHEAD_BYTES
    if declared is not None and declared.isdigit() and int(declared) > budget:
        raise FileTooLarge(f"file larger than {max_file_bytes} bytes")
    received = 0

    async def bounded_receive() -> Message:
        nonlocal received
        message = await request.receive()
        received += len(message.get("body", b""))
        if received > budget:
            raise FileTooLarge(f"file larger than {max_file_bytes} bytes")
        return message

    bounded = Request(request.scope, bounded_receive)
    form = await bounded.form(max_files=1, max_fields=10)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise EmptyFile('send the file as multipart/form-data in a field named "file"')
        data = await upload.read(max_file_bytes + 1)
        if len(data) > max_file_bytes:
            raise FileTooLarge(f"file larger than {max_file_bytes} bytes")
        return upload.filename, data
    finally:
        await form.close()


@router.post(
    "/assistants/{assistant_id}/files",
    status_code=status.HTTP_201_CREATED,
    response_model=FileOut,
)
async def upload_file(
    assistant_id: str, request: Request, principal: CurrentPrincipal, gw: GatewayDep
) -> FileOut:
    # Ownership first: someone else's assistant is 404 before a byte of the body is read. No
    # transaction stays open while the body arrives.
    async with gw.knowledge.outbox.unit_of_work() as session:
        await gw.chat.get_assistant(session, principal.user_id, assistant_id)
    name, data = await _read_upload(request, gw.knowledge.limits.max_file_bytes)
    gw.knowledge.check_upload(data)
    async with gw.knowledge.outbox.unit_of_work() as session:
        file = await gw.knowledge.upload(session, principal.user_id, assistant_id, name, data)
    return FileOut.model_validate(file)


@router.get("/assistants/{assistant_id}/files", response_model=FilePage)
async def list_files(
    assistant_id: str,
    principal: CurrentPrincipal,
    gw: GatewayDep,
    skip: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FilePage:
    async with gw.knowledge.outbox.unit_of_work() as session:
        await gw.chat.get_assistant(session, principal.user_id, assistant_id)
        items, total = await gw.knowledge.list_files(
            session, principal.user_id, assistant_id, skip, limit
        )
    return FilePage(
        items=[FileOut.model_validate(f) for f in items], total=total, skip=skip, limit=limit
    )


@router.get("/assistants/{assistant_id}/files/{file_id}", response_model=FileOut)
async def get_file(
    assistant_id: str, file_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> FileOut:
    async with gw.knowledge.outbox.unit_of_work() as session:
        file = await gw.knowledge.get(session, principal.user_id, assistant_id, file_id)
    return FileOut.model_validate(file)


@router.get("/assistants/{assistant_id}/files/{file_id}/content")
async def download_file(
    assistant_id: str, file_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> Response:
    async with gw.knowledge.outbox.unit_of_work() as session:
        file, data = await gw.knowledge.content(session, principal.user_id, assistant_id, file_id)
    headers: dict[str, Any] = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(file.name, safe='')}",
        "X-Content-Type-Options": "nosniff",
    }
    # Served as the type it was sniffed as, but always as an attachment: an uploaded HTML
    # page must never render in the gateway's origin.
    return Response(data, media_type=file.content_type, headers=headers)


@router.delete("/assistants/{assistant_id}/files/{file_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(
    assistant_id: str, file_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> None:
    async with gw.knowledge.outbox.unit_of_work() as session:
        await gw.knowledge.delete(session, principal.user_id, assistant_id, file_id)
