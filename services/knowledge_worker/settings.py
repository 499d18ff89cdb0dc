from pydantic import Field

from shared.settings import ServiceSettings


class KnowledgeWorkerSettings(ServiceSettings):
    """Settings of a knowledge worker (env prefix CONVOAI_)."""

    knowledge_concurrency: int = Field(
        default=2, ge=1, le=64, description="Files extracted at once (one child process each)."
    )
    knowledge_extraction_timeout_s: float = Field(
        default=60.0, gt=0, description="Wall-clock limit for reading one file."
    )
    knowledge_extraction_memory_mib: int = Field(
        default=1024, ge=128, description="Address-space limit of the extraction process."
    )
    knowledge_max_pages: int = Field(default=1000, ge=1, description="Pages of a PDF indexed.")
    knowledge_max_unpacked_mib: int = Field(
        default=100, ge=1, description="A .docx that unpacks to more is refused as a bomb."
    )
    knowledge_max_characters: int = Field(
        default=5_000_000, ge=1, description="Characters of text indexed per file."
    )
    knowledge_chunk_chars: int = Field(
        default=1200, ge=200, description="Largest chunk, in characters (~300 tokens)."
    )
    knowledge_chunk_overlap_chars: int = Field(
        default=200, ge=0, description="Text a chunk repeats from the end of the previous one."
    )
    knowledge_default_language: str = Field(
        default="english",
        description="Text search configuration for files that do not declare a language.",
    )
    llm_base_url: str = "http://127.0.0.1:8009/v1"
    llm_api_key: str = Field(default="", repr=False)
    embedding_model: str = Field(
        default="",
        description="Embeddings model for hybrid retrieval (needs pgvector); empty: full text "
        "only. Must match the chat workers' setting.",
    )
