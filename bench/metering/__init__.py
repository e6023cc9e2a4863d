"""Metering over HTTP, against a gunicorn and a Celery worker that the benchmark starts.

Six figures, targets from the performance notes and the issues:

1. durable ingest through ``POST /api/v1/events``: 1000 events per request, every
   identifier new (the unique index that deduplicates decides each one), several client
   processes in a closed loop for a fixed time. Next to it, in the same run, a raw
   ``COPY`` of the very rows the API stored into a scratch copy of the events table, and
   the same figure with 1x, 10x and 100x rows already in the table. Target: 25,000
   events/s.
2. accepted -> reflected in the balance: ingest paced at 5,000 events/s while the worker
   rates what the API enqueues; for sampled events, the time from the 202 until the
   event's rating is visible (it commits in the transaction that writes the event's
   ledger debit and period usage, which ``GET .../balance`` reads). Target: p99 under 2 s.
3. ``POST /api/v1/authorizations`` on one hot customer (hard-stop plan), 32 concurrent
   clients, next to a trivial ``GET /api/v1/customers/{id}`` served by the same gunicorn
   in the same rounds. Target: at least half the GET rate, zero overdraw. Then the same
   clients against gunicorn restarted in other layouts (``--layouts``, by default 8
   workers x 4 threads and 32 x 1), with the ledger's calls per transaction in each.
4. ``compat`` (``bench.metering.compat``): each vendor-compatible ingest path (Stripe meter
   events, OpenMeter CloudEvents, Lago events) next to the native one at the same batch
   size, taking turns within each run. Target: at least 0.8x of native.
5. ``memory``: the rating worker's resident memory before and after it rates a backlog
   of ``--memory-events`` (1,000,000 by default) queued by SQL. Target: no growth.
6. ``e2e`` (``bench.metering.e2e``): end to end, a million events sent as fast as the
   server takes them (1,000 and, separately, 100 per request) over 1,000 customers, one
   of them getting a fifth, with the worker and beat running, timed from the first request
   until the last event is rated (in its balance). Target: 20,000 events/s.

Load goes only to 127.0.0.1, from client processes that do not load Django; each is
bounded by a request count and a deadline. The web server and the worker run in
production mode (``DEBUG=false``) on the benchmark database, with the per-key rate limit
raised; they are stopped at the end.

The modules, in the order a run uses them:

- ``command``: the options and the run from start to finish;
- ``stack``: gunicorn, the Celery worker and the broker; ``clients``: the HTTP load
  processes; ``cpu``: CPU accounting from /proc; ``data``: the benchmark database's
  customers, past events and SQL helpers; ``context``: what every figure is measured with;
- one module per figure: ``ingest`` (figure 1) with ``db_paths`` (its ``COPY`` reference
  and the database alone), ``rating`` (rating capacity), ``lag`` (figure 2), ``auth``
  (figure 3), ``memory`` and ``e2e``; ``profiling`` times the steps of one request for them;
- ``results`` (what a run measured, the verdict), ``output`` (how figures are written),
  ``docs`` and ``analysis`` (the docs section).
"""

from bench.metering.command import add_arguments, run

__all__ = ["add_arguments", "run"]
