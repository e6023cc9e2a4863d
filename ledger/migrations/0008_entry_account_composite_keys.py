# An entry's operation and grant must belong to the entry's account: two composite
# foreign keys, (operation, account) and (grant, account), replace the three plain ones
# (operation, account, grant), which checked each id alone. One check fewer per entry
# written, and an entry can no longer move one customer's credits under another
# customer's operation or grant.
#
# Without stopping writes on a large ledger: the unique indexes the keys point at are
# built concurrently, the keys are added NOT VALID (no scan under the lock) and validated
# after (a scan that lets writes go on), and the plain keys are dropped only once the
# composite ones stand, so every entry is checked throughout. A ledger holding an entry
# whose operation or grant is another account's fails the validation and stops here.

import django.db.models.deletion
from django.db import migrations, models

_ENTRY = "ledger_ledgerentry"
_DEFERRED = "DEFERRABLE INITIALLY DEFERRED"


def _unique_of_account(model: str, table: str, name: str) -> migrations.SeparateDatabaseAndState:
    return migrations.SeparateDatabaseAndState(
        state_operations=[
            migrations.AddConstraint(
                model_name=model,
                constraint=models.UniqueConstraint(fields=("id", "account"), name=name),
            ),
        ],
        database_operations=[
            migrations.RunSQL(
                f'CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "{name}" '
                f'ON "{table}" ("id", "account_id")',
                reverse_sql=f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"',
            ),
            migrations.RunSQL(
                f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" UNIQUE USING INDEX "{name}"',
                reverse_sql=f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"',
            ),
        ],
    )


def _composite_key(name: str, column: str, table: str) -> migrations.RunSQL:
    return migrations.RunSQL(
        [
            f'ALTER TABLE "{_ENTRY}" ADD CONSTRAINT "{name}" '
            f'FOREIGN KEY ("{column}", "account_id") '
            f'REFERENCES "{table}" ("id", "account_id") {_DEFERRED} NOT VALID',
            f'ALTER TABLE "{_ENTRY}" VALIDATE CONSTRAINT "{name}"',
        ],
        reverse_sql=f'ALTER TABLE "{_ENTRY}" DROP CONSTRAINT "{name}"',
    )


def _plain_key_dropped(field: str, to: str, **options: object) -> migrations.AlterField:
    return migrations.AlterField(
        model_name="ledgerentry",
        name=field,
        field=models.ForeignKey(
            db_constraint=False,
            on_delete=django.db.models.deletion.PROTECT,
            related_name="entries",
            to=to,
            **options,
        ),
    )


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("ledger", "0007_entry_indexes_rating_writes"),
    ]

    operations = [
        _unique_of_account("ledgeroperation", "ledger_ledgeroperation", "ledger_operation_of_account"),
        _unique_of_account("creditgrant", "ledger_creditgrant", "ledger_grant_of_account"),
        _composite_key(
            "ledger_entry_operation_of_account",
            "operation_id",
            "ledger_ledgeroperation",
        ),
        _composite_key(
            "ledger_entry_grant_of_account", "grant_id", "ledger_creditgrant"
        ),
        _plain_key_dropped("operation", "ledger.ledgeroperation"),
        _plain_key_dropped("account", "ledger.account", db_index=False),
        _plain_key_dropped("grant", "ledger.creditgrant", blank=True, null=True),
    ]
