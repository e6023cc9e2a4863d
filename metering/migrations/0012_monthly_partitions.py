# Meter events and their ratings partitioned by month (metering.partitions).
#
# Each table is renamed to <table>_legacy and attached, with the rows it holds and the
# indexes it has, as the partition of ids below any month's: no row is copied or renumbered.
# The new partitioned table takes the old name, indexes and foreign keys; references to
# events (cancellations) are pointed at it. Keys of the events stored so far fill
# metering_eventkey, which now keeps (customer, identifier) unique, and the months ingest
# can accept get their partitions. Reversing copies the rows back into plain tables.

import django.db.models.deletion
from django.db import migrations, models

LEGACY_BELOW = 1 << 40  # metering.partitions.SEQUENCE_BITS: the first id of any month

TABLES = {"metering_meterevent": "id", "metering_eventrating": "event_id"}

EVENT_ID_FUNCTION = """
CREATE FUNCTION metering_event_id(stamp timestamptz) RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE AS $$
    SELECT (((extract(year FROM stamp AT TIME ZONE 'UTC')::bigint - 1970) * 12
             + extract(month FROM stamp AT TIME ZONE 'UTC')::bigint - 1) << 40)
           | (nextval('metering_meterevent_id_seq') & 1099511627775)
$$
"""


def _fetch(cursor, sql, params=()):
    cursor.execute(sql, params)
    return cursor.fetchall()


def _partition(cursor, table, column):
    legacy = f"{table}_legacy"
    indexes = _fetch(
        cursor,
        """
        SELECT i.relname, pg_get_indexdef(i.oid), c.contype
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        LEFT JOIN pg_constraint c ON c.conindid = i.oid AND c.conrelid = x.indrelid
        WHERE x.indrelid = %s::regclass
        """,
        [table],
    )
    outgoing = _fetch(
        cursor,
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = %s::regclass AND contype = 'f'",
        [table],
    )
    incoming = _fetch(
        cursor,
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE confrelid = %s::regclass AND contype = 'f'",
        [table],
    )
    for referencing, name, _definition in incoming:  # made again on the new table, below
        cursor.execute(f"ALTER TABLE {referencing} DROP CONSTRAINT {name}")
    cursor.execute(f"ALTER TABLE {table} ALTER COLUMN {column} DROP IDENTITY IF EXISTS")
    cursor.execute(f"ALTER TABLE {table} RENAME TO {legacy}")
    for number, (name, _definition, contype) in enumerate(indexes):
        if contype == "u":  # the identifier's uniqueness moves to metering_eventkey
            cursor.execute(f"ALTER TABLE {legacy} DROP CONSTRAINT {name}")
        elif contype:
            cursor.execute(f"ALTER TABLE {legacy} RENAME CONSTRAINT {name} TO {legacy}_{number}")
        else:
            cursor.execute(f"ALTER INDEX {name} RENAME TO {legacy}_{number}")
    cursor.execute(
        f"CREATE TABLE {table} (LIKE {legacy} INCLUDING DEFAULTS) PARTITION BY RANGE ({column})"
    )
    for name, definition, contype in indexes:
        if contype == "p":
            cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} PRIMARY KEY ({column})")
        elif not contype:
            # The definition names the table by its old name, now the partitioned one.
            cursor.execute(definition)
    for name, definition in outgoing:
        cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
    cursor.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    # Rows numbered in a month already (stored while partitioned, kept by a reversal of
    # this migration) wait in DEFAULT until their month's partition is made, below.
    cursor.execute(
        f"WITH moved AS (DELETE FROM {legacy} WHERE {column} >= %s RETURNING *) "
        f"INSERT INTO {table} SELECT * FROM moved",
        [LEGACY_BELOW],
    )
    cursor.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {legacy} FOR VALUES FROM (MINVALUE) TO (%s)",
        [LEGACY_BELOW],
    )
    for referencing, name, definition in incoming:
        cursor.execute(f"ALTER TABLE {referencing} ADD CONSTRAINT {name} {definition}")


def forward(apps, schema_editor):
    from django.utils import timezone

    with schema_editor.connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_eventkey (customer_id, identifier, event_id) "
            "SELECT customer_id, identifier, id FROM metering_meterevent"
        )
        for table, column in TABLES.items():
            _partition(cursor, table, column)
        cursor.execute("CREATE SEQUENCE metering_meterevent_id_seq OWNED BY metering_meterevent.id")
        # Applied again after a reversal, rows numbered in a month are back: the sequence
        # goes on after their numbers, or a new event would take one of their ids.
        cursor.execute(
            "SELECT setval('metering_meterevent_id_seq', "
            "COALESCE(max(id & %s), 0) + 1, false) FROM metering_meterevent WHERE id >= %s",
            [LEGACY_BELOW - 1, LEGACY_BELOW],
        )
        cursor.execute(EVENT_ID_FUNCTION)
    # The months ingest can accept now, and the next ones; beat keeps them coming.
    from metering.partitions import partitions_ensure

    partitions_ensure(timezone.now())


def backward(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("DROP FUNCTION metering_event_id(timestamptz)")
        for table, column in TABLES.items():
            indexes = _fetch(
                cursor,
                "SELECT i.relname, pg_get_indexdef(i.oid) FROM pg_index x "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "WHERE x.indrelid = %s::regclass AND NOT x.indisprimary",
                [table],
            )
            outgoing = _fetch(
                cursor,
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = %s::regclass AND contype = 'f' AND conparentid = 0",
                [table],
            )
            incoming = _fetch(
                cursor,
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE confrelid = %s::regclass AND contype = 'f' "
                "AND conparentid = 0",
                [table],
            )
            for referencing, name, _definition in incoming:
                cursor.execute(f"ALTER TABLE {referencing} DROP CONSTRAINT {name}")
            plain = f"{table}_plain"
            cursor.execute(f"CREATE TABLE {plain} (LIKE {table} INCLUDING DEFAULTS)")
            cursor.execute(f"INSERT INTO {plain} SELECT * FROM {table}")
            cursor.execute(f"DROP TABLE {table} CASCADE")
            cursor.execute(f"ALTER TABLE {plain} RENAME TO {table}")
            cursor.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({column})"
            )
            for _name, definition in indexes:
                cursor.execute(definition)
            for name, definition in outgoing:
                cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}")
            for referencing, name, definition in incoming:
                cursor.execute(f"ALTER TABLE {referencing} ADD CONSTRAINT {name} {definition}")
        cursor.execute(
            "ALTER TABLE metering_meterevent ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY"
        )
        # New ids continue below any month's, where the rows stored before partitioning
        # were numbered: forward again, they go back into the legacy partition.
        cursor.execute(
            "SELECT setval(pg_get_serial_sequence('metering_meterevent', 'id'), "
            "COALESCE((SELECT max(id) FROM metering_meterevent WHERE id < %s), 0) + 1, false)",
            [LEGACY_BELOW],
        )
        cursor.execute(
            "ALTER TABLE metering_meterevent ADD CONSTRAINT metering_event_identifier "
            "UNIQUE (customer_id, identifier)"
        )


class Migration(migrations.Migration):
    atomic = True

    dependencies = [
        ("metering", "0011_raw_events_retention"),
    ]

    operations = [
        migrations.CreateModel(
            name="EventKey",
            fields=[
                (
                    "pk",
                    models.CompositePrimaryKey(
                        "customer_id",
                        "identifier",
                        blank=True,
                        editable=False,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("customer_id", models.BigIntegerField()),
                ("identifier", models.CharField(max_length=330)),
                ("event_id", models.BigIntegerField()),
            ],
        ),
        # Events move between partitions (DEFAULT into their month's), which a foreign
        # key pointing at the partitioned table refuses: the reconcile checks instead.
        migrations.AlterField(
            model_name="eventcancellation",
            name="event",
            field=models.OneToOneField(
                db_constraint=False,
                on_delete=django.db.models.deletion.PROTECT,
                primary_key=True,
                related_name="cancellation",
                serialize=False,
                to="metering.meterevent",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveConstraint(
                    model_name="meterevent",
                    name="metering_event_identifier",
                ),
                migrations.AlterField(
                    model_name="meterevent",
                    name="id",
                    field=models.BigIntegerField(primary_key=True, serialize=False),
                ),
            ],
            database_operations=[migrations.RunPython(forward, backward)],
        ),
    ]
