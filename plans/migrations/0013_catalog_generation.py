# Rating prices each batch with the rate table of the customer's rate cards (meters, rate
# card versions, rates). Reading the table anew for every batch was three statements a
# batch; a process now keeps it while the catalog's generation is unchanged.
#
# The generation is one row, moved on by every statement that changes meters, rate card
# versions or rates. Its value comes from a sequence, so a rolled-back change never hands
# out a number again; and it is a row, so the new number is seen when the change commits,
# not before: a reader that reads the generation first and then the tables never keeps an
# older table under a newer number.

from django.db import migrations

TABLES = ("plans_meter", "plans_ratecardversion", "plans_rate")

FORWARD = [
    "CREATE SEQUENCE plans_catalog_generation_seq",
    """
    CREATE TABLE plans_catalog_generation (
        id smallint PRIMARY KEY CHECK (id = 1),
        generation bigint NOT NULL
    )
    """,
    "INSERT INTO plans_catalog_generation VALUES (1, nextval('plans_catalog_generation_seq'))",
    """
    CREATE FUNCTION plans_catalog_changed() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE plans_catalog_generation SET generation = nextval('plans_catalog_generation_seq');
        RETURN NULL;
    END
    $$
    """,
    *(
        f"""
        CREATE TRIGGER plans_catalog_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
        ON {table} FOR EACH STATEMENT EXECUTE FUNCTION plans_catalog_changed()
        """
        for table in TABLES
    ),
]

REVERSE = [
    *(f"DROP TRIGGER plans_catalog_changed ON {table}" for table in TABLES),
    "DROP FUNCTION plans_catalog_changed()",
    "DROP TABLE plans_catalog_generation",
    "DROP SEQUENCE plans_catalog_generation_seq",
]


class Migration(migrations.Migration):
    dependencies = [
        ("plans", "0012_customer_timezone"),
    ]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
