from alembic import context

from services.analytics_consumer.models import Base
from shared.migrations import configure_and_run

configure_and_run(context, Base.metadata)
