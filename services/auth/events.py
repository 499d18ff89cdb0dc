"""The events auth builds from its accounts, in one place each."""

from __future__ import annotations

from services.auth.models import User
from shared.events import UserUpdated

PRODUCER = "auth"


def user_updated(user: User, changed_fields: list[str], actor_id: str) -> UserUpdated:
    """`user.updated` for `changed_fields` of `user`, as it is after the change."""
    return UserUpdated(
        producer=PRODUCER,
        user_id=user.id,
        changed_fields=changed_fields,
        roles=list(user.roles),
        is_active=user.is_active,
        actor_id=actor_id,
    )
