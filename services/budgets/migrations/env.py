from alembic import context

from services.budgets.models import Base
from shared.migrations import configure_and_run

configure_and_run(context, Base.metadata)
