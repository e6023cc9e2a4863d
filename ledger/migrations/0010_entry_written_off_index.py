# Each batch rated reads what was written off the customer's included grants (expire and
# void entries). On the grant's own index that read walks every debit of the grant, one
# per event charged to it; this index holds the write-offs alone, a few rows per grant.
# Concurrently: a plain CREATE INDEX would stop every write to credits while it reads the
# ledger.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("ledger", "0009_entry_keys_checked_per_statement"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="ledgerentry",
            index=models.Index(
                condition=models.Q(("kind__in", ["expire", "void"])),
                fields=["grant"],
                name="ledger_entry_written_off",
            ),
        ),
    ]
