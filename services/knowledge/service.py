"""Files of an assistant as its owner manages them: upload, list, read, delete.

The caller (the gateway) has checked that the assistant is the caller's; every query here is
also scoped by owner and assistant, so a file of someone else's is never found. Limits are
checked before anything is stored, under a per-user lock so concurrent uploads cannot
overshoot the quota together. The edge owns the unit of work (`outbox.unit_of_work()`, whose
staged `file.*` events are published after its commit); nothing here commits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.knowledge import repository, retrieval
from services.knowledge.models import MAX_FILE_NAME_LENGTH, FileContent, FileStatus, KnowledgeFile
from services.knowledge.sniffing import UnsupportedDocument, sniff
from shared.db import driver_connection
from shared.events import FileUploaded, SourceRef
from shared.ids import IdKind, is_valid_id, new_id
from shared.outbox import Outbox


@dataclass(frozen=True)
class UploadLimits:
    max_file_bytes: int
    max_files_per_assistant: int
    max_bytes_per_user: int


class KnowledgeError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FileNotFound(KnowledgeError):
    pass


class UnsupportedFileType(KnowledgeError):
    pass


class FileTooLarge(KnowledgeError):
    pass


class TooManyFiles(KnowledgeError):
    pass


class QuotaExceeded(KnowledgeError):
    pass


class EmptyFile(KnowledgeError):
    pass


def clean_file_name(name: str | None) -> str:
    """The name as shown back: no directories, no control characters, bounded length."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base or "upload")[:MAX_FILE_NAME_LENGTH]


class KnowledgeFiles:
    def __init__(
        self, engine: AsyncEngine, outbox: Outbox, limits: UploadLimits, *, producer: str
    ) -> None:
        self._engine = engine
        self.outbox = outbox
        """The `knowledge` schema's outbox: its `unit_of_work()` is the edge's transaction."""
        self.limits = limits
        self._producer = producer

    def check_upload(self, data: bytes) -> str:
        """The type of an upload, or why it is refused; before any database work."""
        if len(data) > self.limits.max_file_bytes:
            raise FileTooLarge(f"file larger than {self.limits.max_file_bytes} bytes")
        if not data:
            raise EmptyFile("the file is empty")
        try:
            content_type = sniff(data)
        except UnsupportedDocument as exc:
            raise UnsupportedFileType(
                f"unsupported file type ({exc}); accepted: plain text, Markdown, HTML, PDF, "
                "Word (.docx)"
            ) from exc
        return content_type.value

    async def upload(
        self, session: AsyncSession, owner_id: str, assistant_id: str, name: str | None, data: bytes
    ) -> KnowledgeFile:
        content_type = self.check_upload(data)
        file = KnowledgeFile(
            id=new_id(IdKind.FILE),
            assistant_id=assistant_id,
            owner_id=owner_id,
            name=clean_file_name(name),
            content_type=content_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            status=FileStatus.UPLOADED.value,
        )
        await repository.lock_owner_quota(session, owner_id)
        count = await repository.count_assistant_files(session, assistant_id)
        if count >= self.limits.max_files_per_assistant:
            raise TooManyFiles(
                f"the assistant already has {count} files "
                f"(at most {self.limits.max_files_per_assistant}); delete one first"
            )
        used = await repository.owner_bytes(session, owner_id)
        if used + len(data) > self.limits.max_bytes_per_user:
            raise QuotaExceeded(
                f"storage quota exceeded: {used} of {self.limits.max_bytes_per_user} "
                f"bytes used, this file needs {len(data)}; delete files first"
            )
        try:
            session.add(file)
            await session.flush()
        except IntegrityError as exc:
            # The assistant was deleted between the caller's check and this insert.
            raise FileNotFound("Assistant not found") from exc
        session.add(FileContent(file_id=file.id, data=data))
        await session.flush()
        await session.refresh(file)
        await self.outbox.stage(
            session,
            FileUploaded(
                producer=self._producer,
                user_id=owner_id,
                correlation_id=file.id,
                file_id=file.id,
                assistant_id=assistant_id,
                name=file.name,
                content_type=file.content_type,
                size_bytes=file.size_bytes,
            ),
        )
        return file

    async def list_files(
        self, session: AsyncSession, owner_id: str, assistant_id: str, skip: int, limit: int
    ) -> tuple[Sequence[KnowledgeFile], int]:
        return await repository.list_files(session, owner_id, assistant_id, skip, limit)

    async def get(
        self, session: AsyncSession, owner_id: str, assistant_id: str, file_id: str
    ) -> KnowledgeFile:
        return await self._owned(session, owner_id, assistant_id, file_id)

    async def content(
        self, session: AsyncSession, owner_id: str, assistant_id: str, file_id: str
    ) -> tuple[KnowledgeFile, bytes]:
        file = await self._owned(session, owner_id, assistant_id, file_id)
        content = await session.get(FileContent, file_id)
        if content is None:
            raise FileNotFound("File not found")
        return file, content.data

    async def delete(
        self, session: AsyncSession, owner_id: str, assistant_id: str, file_id: str
    ) -> None:
        """Its bytes and chunks go with it (foreign keys): no answer uses it from now on."""
        file = await self._owned(session, owner_id, assistant_id, file_id)
        await session.delete(file)

    async def sources_of_replies(self, message_ids: Sequence[str]) -> dict[str, list[SourceRef]]:
        if not message_ids:
            return {}
        async with driver_connection(self._engine) as connection:
            return await retrieval.reply_sources(connection, message_ids)

    async def _owned(
        self, session: AsyncSession, owner_id: str, assistant_id: str, file_id: str
    ) -> KnowledgeFile:
        file = None
        if is_valid_id(file_id, IdKind.FILE):
            file = await repository.get_file(session, owner_id, assistant_id, file_id)
        if file is None:
            raise FileNotFound("File not found")
        return file
