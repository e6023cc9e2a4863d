from django.db import migrations

# Audit rows are evidence: UPDATE and DELETE are refused in the database itself, whoever
# issues them (the same rule as the ledger's entries).
FORWARD = """
CREATE OR REPLACE FUNCTION staff_audit_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit rows are append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER staff_auditlog_append_only
    BEFORE UPDATE OR DELETE ON staff_auditlog
    FOR EACH ROW EXECUTE FUNCTION staff_audit_refuse_change();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS staff_auditlog_append_only ON staff_auditlog;
DROP FUNCTION IF EXISTS staff_audit_refuse_change();
"""


class Migration(migrations.Migration):
    dependencies = [("staff", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
