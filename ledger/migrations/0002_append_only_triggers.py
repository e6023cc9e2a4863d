from django.db import migrations

# The ledger is append-only in the database itself, not only in Python: UPDATE and
# DELETE of entries and operations are refused whoever issues them. TRUNCATE is left to
# the table owner (it is how test isolation resets tables); the application's database
# role in production should not own the tables.
FORWARD = """
CREATE OR REPLACE FUNCTION ledger_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are append-only: % on % refused; write a correcting entry',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_entry_append_only
    BEFORE UPDATE OR DELETE ON ledger_ledgerentry
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_operation_append_only
    BEFORE UPDATE OR DELETE ON ledger_ledgeroperation
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS ledger_entry_append_only ON ledger_ledgerentry;
DROP TRIGGER IF EXISTS ledger_operation_append_only ON ledger_ledgeroperation;
DROP FUNCTION IF EXISTS ledger_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("ledger", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
