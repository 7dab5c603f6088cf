"""PostgreSQL: `ledger_post_group(postings jsonb, lock_wait text)`, the ledger's write path for a group,
with a set-based path for the common group: plain debits only

`ledger_post` (migration 0013) walks a group posting by posting in PL/pgSQL; that costs about 80
microseconds of server CPU per posting, most of it the interpreter's per-statement and per-assignment
overhead, not the writes. Bulk usage (a batch of 1,000 usage reports, or group commit under load) is
almost always a group in which every posting is a plain debit (no grant of its own, no purchase's own
grants, no single grant to take from), with a key not seen before, that its floor lets through. Such a
group is written here with a fixed number of set-based statements whatever its size, each account
row still locked first (in account order, as the walk does) and everything read after the lock:

1. parse the JSON once into arrays;
2. lock the groups' account rows (`FOR NO KEY UPDATE`, ordered by id) and read their aggregates;
3. look up the group's keys (one index probe per key);
4. compute, per account in the group's order, each posting's balance before, `seq` and `kind_seq`
   (window sums over the locked aggregates), and whether every posting passes its floor;
5. write the entries, the grant consumption (each debit's interval of the account's running need
   against the grants' intervals in burn order: the same amounts the walk takes one by one), the
   grants, the aggregates and the daily rollup, one statement each, and answer every posting.

When anything is not so (a credit or any other kind of posting, a key already used or used twice in
the group, a missing account, a posting its floor refuses), nothing has been written yet, and the group
goes through `ledger_post` unchanged: it holds the same row locks, reads again and decides each posting
on its own. So the results are exactly those of `ledger_post`, posting for posting.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

LEDGER_POST_GROUP = r"""
CREATE OR REPLACE FUNCTION ledger_post_group(postings jsonb, lock_wait text DEFAULT NULL)
RETURNS TABLE (i int, status text, id bigint, account_id int, seq bigint, type varchar, source varchar,
               amount bigint, balance_before bigint, balance_after bigint, description varchar,
               category varchar, metadata jsonb, actor_user_id int, actor_ip varchar,
               idempotency_key varchar, created_at timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
  n int;
  plain boolean;
  keys_unique boolean;
  passes boolean;
  accts int[];
  -- the group, in its order
  f_i int[]; f_acct int[]; f_type varchar[]; f_kind varchar[]; f_amount bigint[]; f_floor bigint[];
  f_desc varchar[]; f_cat varchar[]; f_meta jsonb[]; f_actor int[]; f_ip varchar[]; f_key varchar[];
  f_at timestamptz[]; f_day date[];
  -- computed per posting: new id, balance before, seq, kind_seq
  f_id bigint[]; f_before bigint[]; f_seq bigint[]; f_kseq bigint[];
  -- the locked account rows' aggregates, by id
  l_id int[]; l_balance bigint[]; l_tcount bigint[]; l_topup bigint[]; l_usage bigint[]; l_refund bigint[];
  l_adjust bigint[];
  entry_seq regclass := pg_get_serial_sequence('ledger_entry', 'id');
BEGIN
  IF lock_wait IS NOT NULL THEN  -- a group waits this long for a row lock, then fails as a whole
    PERFORM set_config('lock_timeout', lock_wait, true);
  END IF;

  SELECT count(*),
         COALESCE(bool_and(x.amount < 0 AND x.from_grant IS NULL AND x.checkout_session_id IS NULL
                           AND x.account_id IS NOT NULL), false),
         count(x.idempotency_key) = count(DISTINCT x.account_id::text || ':' || x.idempotency_key),
         array_agg(x.i ORDER BY x.i), array_agg(x.account_id ORDER BY x.i), array_agg(x.type ORDER BY x.i),
         array_agg(x.kind ORDER BY x.i), array_agg(x.amount ORDER BY x.i), array_agg(x.floor ORDER BY x.i),
         array_agg(x.description ORDER BY x.i), array_agg(x.category ORDER BY x.i),
         array_agg(COALESCE(x.metadata, '{}'::jsonb) ORDER BY x.i), array_agg(x.actor_user_id ORDER BY x.i),
         array_agg(x.actor_ip ORDER BY x.i), array_agg(x.idempotency_key ORDER BY x.i),
         array_agg(x.created_at ORDER BY x.i), array_agg(x.day ORDER BY x.i)
    INTO n, plain, keys_unique, f_i, f_acct, f_type, f_kind, f_amount, f_floor, f_desc, f_cat, f_meta, f_actor,
         f_ip, f_key, f_at, f_day
    FROM jsonb_to_recordset(postings) AS x(
      i int, account_id int, type varchar, kind varchar, amount bigint, floor bigint, description varchar,
      category varchar, metadata jsonb, actor_user_id int, actor_ip varchar, idempotency_key varchar,
      created_at timestamptz, day date, checkout_session_id int, from_grant bigint);

  IF n = 0 OR NOT plain OR NOT keys_unique THEN
    RETURN QUERY SELECT * FROM ledger_post(postings, NULL);
    RETURN;
  END IF;

  -- The account rows, locked in id order (as the walk locks them), and nothing read before the lock.
  SELECT array_agg(DISTINCT a) INTO accts FROM unnest(f_acct) AS a;
  SELECT array_agg(a.id ORDER BY a.id), array_agg(a.balance ORDER BY a.id),
         array_agg(a.transaction_count ORDER BY a.id), array_agg(a.topup_count ORDER BY a.id),
         array_agg(a.usage_count ORDER BY a.id), array_agg(a.refund_count ORDER BY a.id),
         array_agg(a.adjustment_count ORDER BY a.id)
    INTO l_id, l_balance, l_tcount, l_topup, l_usage, l_refund, l_adjust
    FROM (SELECT * FROM credit_account ca WHERE ca.id = ANY(accts) ORDER BY ca.id FOR NO KEY UPDATE) a;
  IF cardinality(l_id) IS DISTINCT FROM cardinality(accts) THEN  -- a missing account: the walk answers it
    RETURN QUERY SELECT * FROM ledger_post(postings, NULL);
    RETURN;
  END IF;

  -- A key already used (a replay or a conflict): the walk. The range and ORDER BY ... LIMIT 1 make the
  -- (account_id, idempotency_key) index the plan, one probe per key (see ledger_post).
  PERFORM 1
     FROM unnest(f_acct, f_key) AS u(a, k)
     CROSS JOIN LATERAL (
       SELECT 1 FROM ledger_entry e
        WHERE e.account_id = u.a AND e.idempotency_key >= u.k AND e.idempotency_key <= u.k
        ORDER BY e.idempotency_key LIMIT 1) found
    WHERE u.k IS NOT NULL
    LIMIT 1;
  IF FOUND THEN
    RETURN QUERY SELECT * FROM ledger_post(postings, NULL);
    RETURN;
  END IF;

  -- Per posting, in the group's order per account: its balance before, seq and kind_seq, as if every
  -- posting before it passed; if every one passes its floor, that is what the walk would write.
  SELECT bool_and(w.before + w.amount >= w.floor),
         array_agg(w.before ORDER BY w.i), array_agg(w.seq ORDER BY w.i), array_agg(w.kseq ORDER BY w.i)
    INTO passes, f_before, f_seq, f_kseq
    FROM (
      SELECT p.i, p.amount, p.floor,
             a.balance + (sum(p.amount) OVER per_account)::bigint - p.amount AS before,
             a.transaction_count + row_number() OVER per_account AS seq,
             CASE p.bucket WHEN 'topup' THEN a.topup_count WHEN 'usage' THEN a.usage_count
                           WHEN 'refund' THEN a.refund_count ELSE a.adjustment_count END
               + row_number() OVER (PARTITION BY p.acct, p.bucket ORDER BY p.i) AS kseq
        FROM (SELECT u.*, CASE WHEN u.kind IN ('topup', 'usage', 'refund') THEN u.kind ELSE 'adjustment' END AS bucket
                FROM unnest(f_i, f_acct, f_amount, f_floor, f_kind) AS u(i, acct, amount, floor, kind)) p
        JOIN unnest(l_id, l_balance, l_tcount, l_topup, l_usage, l_refund, l_adjust)
             AS a(id, balance, transaction_count, topup_count, usage_count, refund_count, adjustment_count)
          ON a.id = p.acct
      WINDOW per_account AS (PARTITION BY p.acct ORDER BY p.i)
    ) w;
  IF NOT passes THEN  -- one is refused: the walk decides each on the balances that are left
    RETURN QUERY SELECT * FROM ledger_post(postings, NULL);
    RETURN;
  END IF;

  -- ids in the group's order, as the walk draws them
  SELECT array_agg(nextval(entry_seq) ORDER BY g)
    INTO f_id FROM generate_series(1, cardinality(f_i)) AS g;

  INSERT INTO ledger_entry (id, account_id, seq, kind, kind_seq, type, amount, balance_before, balance_after,
                            description, category, metadata, actor_user_id, actor_ip, idempotency_key, created_at)
  SELECT u.id, u.acct, u.seq, u.kind, u.kseq, u.type, u.amount, u.before, u.before + u.amount, u.descr, u.cat,
         u.meta, u.actor, u.ip, u.key, u.at
    FROM unnest(f_id, f_acct, f_seq, f_kind, f_kseq, f_type, f_amount, f_before, f_desc, f_cat, f_meta, f_actor,
                f_ip, f_key, f_at)
         AS u(id, acct, seq, kind, kseq, type, amount, before, descr, cat, meta, actor, ip, key, at);

  -- Burn order, as the walk takes it: per account, the debits' running need [start, stop) against the
  -- grants' running remainders [gstart, gstop) in burn order (class, earliest expiry, none last, oldest);
  -- each debit takes the overlap from each grant, and what no grant covers is debt.
  WITH d AS (
    SELECT u.id, u.acct, (sum(-u.amount) OVER w)::bigint + u.amount AS start, (sum(-u.amount) OVER w)::bigint AS stop
      FROM unnest(f_id, f_acct, f_amount, f_i) AS u(id, acct, amount, i)
    WINDOW w AS (PARTITION BY u.acct ORDER BY u.i)
  ), g AS (
    SELECT cg.id, cg.account_id,
           (sum(cg.remaining) OVER w)::bigint - cg.remaining AS gstart, (sum(cg.remaining) OVER w)::bigint AS gstop
      FROM credit_grant cg
     WHERE cg.account_id = ANY(accts) AND cg.remaining > 0
    WINDOW w AS (PARTITION BY cg.account_id ORDER BY cg.priority, cg.expires_at IS NULL, cg.expires_at, cg.id)
  ), taken AS (
    INSERT INTO grant_consumption (entry_id, grant_id, amount)
    SELECT d.id, g.id, LEAST(d.stop, g.gstop) - GREATEST(d.start, g.gstart)
      FROM d JOIN g ON g.account_id = d.acct AND d.start < g.gstop AND g.gstart < d.stop
     ORDER BY d.id, g.gstart
    RETURNING grant_id, amount
  )
  UPDATE credit_grant cg SET remaining = cg.remaining - t.amount
    FROM (SELECT grant_id, sum(amount)::bigint AS amount FROM taken GROUP BY grant_id) t
   WHERE cg.id = t.grant_id;

  UPDATE credit_account a
     SET balance = a.balance + m.moved, lifetime_consumed = a.lifetime_consumed - m.moved,
         transaction_count = a.transaction_count + m.n, topup_count = a.topup_count + m.n_topup,
         usage_count = a.usage_count + m.n_usage, refund_count = a.refund_count + m.n_refund,
         adjustment_count = a.adjustment_count + m.n_adjust, version = a.version + m.n, updated_at = m.last_at
    FROM (SELECT u.acct, sum(u.amount)::bigint AS moved, count(*) AS n,
                 count(*) FILTER (WHERE u.kind = 'topup') AS n_topup,
                 count(*) FILTER (WHERE u.kind = 'usage') AS n_usage,
                 count(*) FILTER (WHERE u.kind = 'refund') AS n_refund,
                 count(*) FILTER (WHERE u.kind NOT IN ('topup', 'usage', 'refund')) AS n_adjust,
                 (array_agg(u.at ORDER BY u.i DESC))[1] AS last_at
            FROM unnest(f_acct, f_amount, f_kind, f_at, f_i) AS u(acct, amount, kind, at, i)
           GROUP BY u.acct) m
   WHERE a.id = m.acct;

  INSERT INTO usage_rollup AS r (account_id, day, category, amount, count)
  SELECT u.a, u.d, COALESCE(u.c, 'other'), SUM(-u.m)::bigint, COUNT(*)
    FROM unnest(f_acct, f_day, f_cat, f_amount, f_kind) AS u(a, d, c, m, k)
   WHERE u.k = 'usage'
   GROUP BY u.a, u.d, COALESCE(u.c, 'other')
  ON CONFLICT (account_id, day, category)
  DO UPDATE SET amount = r.amount + excluded.amount, count = r.count + excluded.count;

  RETURN QUERY
  SELECT u.i, 'posted'::text, u.id, u.acct, u.seq, u.type, NULL::varchar, u.amount, u.before, u.before + u.amount,
         u.descr, u.cat, u.meta, u.actor, u.ip, u.key, u.at
    FROM unnest(f_i, f_id, f_acct, f_seq, f_type, f_amount, f_before, f_desc, f_cat, f_meta, f_actor, f_ip, f_key,
                f_at) AS u(i, id, acct, seq, type, amount, before, descr, cat, meta, actor, ip, key, at);
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LEDGER_POST_GROUP)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ledger_post_group(jsonb, text)")
