# Two fewer indexes for every entry written, most of which are rating's debits:
# - the one on the account alone: ledger_entry_account_time starts with the account;
# - the one on the hold, now only where an entry names one (holds, captures, releases).
# Concurrently, and the foreign keys left alone: on a large ledger a plain CREATE INDEX,
# or the drop and re-add of the foreign key Django's AlterField would do, stops every
# write to credits for as long as it reads the table.

import django.db.models.deletion
from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


def _without_index(field: str, index: str, to: str) -> migrations.SeparateDatabaseAndState:
    return migrations.SeparateDatabaseAndState(
        state_operations=[
            migrations.AlterField(
                model_name="ledgerentry",
                name=field,
                field=models.ForeignKey(
                    db_index=False,
                    on_delete=django.db.models.deletion.PROTECT,
                    related_name="entries",
                    to=to,
                    **({"blank": True, "null": True} if field == "hold" else {}),
                ),
            ),
        ],
        database_operations=[
            migrations.RunSQL(
                f'DROP INDEX CONCURRENTLY IF EXISTS "{index}"',
                reverse_sql=f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{index}" '
                f'ON "ledger_ledgerentry" ("{field}_id")',
            ),
        ],
    )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("ledger", "0006_customer_facing_description"),
    ]

    operations = [
        AddIndexConcurrently(
            model_name="ledgerentry",
            index=models.Index(
                condition=models.Q(("hold__isnull", False)),
                fields=["hold"],
                name="ledger_entry_hold",
            ),
        ),
        _without_index("hold", "ledger_ledgerentry_hold_id_f64de5a8", "ledger.hold"),
        _without_index("account", "ledger_ledgerentry_account_id_6e45a426", "ledger.account"),
    ]
