from pydantic import Field

from services.chat.settings import ReplySettings


class ChatWorkerSettings(ReplySettings):
    """Settings of a chat worker (env prefix CONVOAI_)."""

    llm_base_url: str = "http://127.0.0.1:8009/v1"
    llm_api_key: str = Field(default="", repr=False)
    default_system_prompt: str = Field(
        default="You are a helpful assistant. Answer clearly and concisely.",
        description="Used when neither the conversation nor its assistant has a system prompt.",
    )
    prefetch: int = Field(
        default=256, ge=1, le=5000, description="In-flight chat requests per worker process."
    )
    llm_timeout_s: float = Field(
        default=60.0, gt=0, description="Longest wait for the model's next bytes (stall)."
    )
    llm_connect_timeout_s: float = Field(default=5.0, gt=0)
    llm_max_retries: int = Field(
        default=4, ge=0, le=20, description="Retries of 429/5xx/timeouts/cut streams per reply."
    )
    llm_retry_base_s: float = Field(default=0.5, ge=0, description="First retry backoff.")
    llm_retry_max_s: float = Field(default=8.0, ge=0, description="Longest retry backoff.")
    frame_interval_ms: float = Field(
        default=50.0,
        ge=0,
        description="Deltas after the first are coalesced into at most one frame per interval.",
    )
    max_frames_per_second: float = Field(
        default=1000.0,
        gt=0,
        description="Frames per second this worker sends at most, over all its replies; with "
        "many replies at once each one's frames are spaced further apart (first tokens still "
        "go out at once).",
    )
    frame_max_chars: int = Field(
        default=1024, ge=1, description="A frame is sent early once this much text is pending."
    )
    persist_interval_s: float = Field(
        default=1.0, gt=0, description="How often a streaming reply's partial is stored."
    )
    stale_reply_s: float = Field(
        default=30.0,
        gt=0,
        description="A streaming reply untouched this long is abandoned and may be regenerated "
        "by a duplicate (not redelivered) request.",
    )
    db_retry_s: float = Field(
        default=30.0,
        ge=0,
        description="How long a request retries the database before going back to the queue.",
    )
    db_pool_size: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Database connections kept open; replies beyond it wait for one.",
    )
    knowledge_budget_tokens: int = Field(
        default=1200,
        ge=0,
        description="Approximate tokens of an assistant's file excerpts put into a prompt "
        "(0: none).",
    )
    knowledge_max_chunks: int = Field(
        default=6, ge=1, le=50, description="File excerpts put into one prompt at most."
    )
    embedding_model: str = Field(
        default="",
        description="Embeddings model for hybrid retrieval (needs pgvector); empty: full text "
        "only. Must match the knowledge workers' setting.",
    )
    knowledge_min_similarity: float = Field(
        default=0.3,
        ge=-1,
        le=1,
        description="Hybrid retrieval: a chunk found only by vector search must be at least "
        "this similar (cosine) to the question.",
    )
