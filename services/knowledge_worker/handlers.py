"""The `knowledge.files` consumer: decode, index, acknowledge (through `shared.queue_consumer`).

An event is acknowledged only once the file's outcome is stored, so a worker that dies
mid-extraction leaves it to be redelivered. A failure that is not the file's fault (database
or embeddings service down) returns it to the queue after a pause; the queue's delivery limit
then dead-letters a file that keeps failing.
"""

from __future__ import annotations

from services.knowledge_worker.service import FileIndexer
from shared.events import FileUploaded
from shared.queue_consumer import Disposition, MessageHandler, settle_each_event

REQUEUE_DELAY_S = 2.0


def file_handler(indexer: FileIndexer) -> MessageHandler:
    async def index(event: FileUploaded, *, redelivered: bool) -> Disposition:
        # Redelivered or not: the file's status decides whether there is anything left to do.
        await indexer.index(event)
        return Disposition.ACK

    return settle_each_event(
        FileUploaded,
        index,
        what="file event",
        requeue_delay_s=REQUEUE_DELAY_S,
        log_fields=lambda event: {"file": event.file_id},
    )
