"""PostgreSQL: `ledger_post(postings jsonb, lock_wait text)`, the ledger's write path as one server-side
function, so that a posting (or a group of them) is one round trip and one statement

Each posting of the JSON array is posted on its own merits, in the array's order, and gets one result
row: `posted` (the new entry), `replayed` (the entry its idempotency key already has), `refused` (it
would pass its floor; `balance_after` carries the balance) or `no_account`. The caller sorts the array
by account, so the rows of a group are locked in one order by everyone (no deadlocks between groups).
Per account the row is locked once (`FOR NO KEY UPDATE`, as an UPDATE of it would: a stronger `FOR UPDATE`
would also wait for, and deadlock with, the foreign-key checks of rows that reference the account) and its aggregates written once; the usage rollup
is upserted once per group. Plain debits (usage, adjustments) consume the account's grants in memory
and are written together, one INSERT of their entries, one of their consumption and one UPDATE of
the grants per run of them: updating one grant row once per debit would leave hundreds of versions of
it in one transaction, each read slower than the last. Credits, refunds, disputes and expiries take
the one-by-one path (their grant, or their own burn order). Every grant change happens under its
account row's lock, so the grants are read without locking them again. SQLite has no server-side functions: there the same
steps run in Python (orcapulse_billing/ledger_write.py).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

LEDGER_POST = r"""
CREATE OR REPLACE FUNCTION ledger_post(postings jsonb, lock_wait text DEFAULT NULL)
RETURNS TABLE (i int, status text, id bigint, account_id int, seq bigint, type varchar, source varchar,
               amount bigint, balance_before bigint, balance_after bigint, description varchar,
               category varchar, metadata jsonb, actor_user_id int, actor_ip varchar,
               idempotency_key varchar, created_at timestamptz)
LANGUAGE plpgsql AS $fn$
#variable_conflict use_column
DECLARE
  p record;
  g record;
  entry_seq regclass := pg_get_serial_sequence('ledger_entry', 'id');
  acct int;            -- the account whose row is locked and whose state the variables below hold
  acct_found boolean;
  bal bigint; tcount bigint; added bigint; consumed bigint;
  n_topup bigint; n_usage bigint; n_refund bigint; n_adjust bigint;
  moved bigint := 0;   -- entries written for `acct` since its row was read
  last_at timestamptz;
  kseq bigint; new_id bigint; need bigint; take bigint; plain boolean; k int;
  -- the account's grants in burn order, read once, consumed here, written back at the next flush
  g_loaded boolean := false; g_ids bigint[]; g_rem bigint[]; g_orig bigint[]; g_at int;
  -- plain debits not yet written (an entry per element), and what they consumed
  e_id bigint[] := '{}'; e_seq bigint[] := '{}'; e_kind varchar[] := '{}'; e_kseq bigint[] := '{}';
  e_type varchar[] := '{}'; e_amount bigint[] := '{}'; e_before bigint[] := '{}';
  e_desc varchar[] := '{}'; e_cat varchar[] := '{}'; e_meta jsonb[] := '{}'; e_actor int[] := '{}';
  e_ip varchar[] := '{}'; e_key varchar[] := '{}'; e_at timestamptz[] := '{}';
  c_entry bigint[] := '{}'; c_grant bigint[] := '{}'; c_amount bigint[] := '{}';
  r_acct int[] := '{}'; r_day date[] := '{}'; r_cat varchar[] := '{}'; r_amount bigint[] := '{}';
BEGIN
  IF lock_wait IS NOT NULL THEN  -- a group waits this long for a row lock, then fails as a whole
    PERFORM set_config('lock_timeout', lock_wait, true);
  END IF;
  FOR p IN
    SELECT * FROM jsonb_to_recordset(postings || '[{"i": -1}]'::jsonb) AS x(
      i int, account_id int, type varchar, kind varchar, source varchar, amount bigint, floor bigint,
      description varchar, category varchar, metadata jsonb, actor_user_id int, actor_ip varchar,
      idempotency_key varchar, created_at timestamptz, day date, priority smallint, expires_at timestamptz,
      checkout_session_id int, from_grant bigint)
  LOOP
    -- Flush: write the pending debits, their consumption and the grants they consumed, in one
    -- statement each. Before another account (and its row's aggregates then), before a posting that
    -- takes the one-by-one path below, and at the end (the sentinel, i = -1).
    IF cardinality(e_id) > 0 AND (p.i = -1 OR acct IS DISTINCT FROM p.account_id OR p.amount > 0
                                  OR p.from_grant IS NOT NULL OR p.checkout_session_id IS NOT NULL) THEN
      INSERT INTO ledger_entry (id, account_id, seq, kind, kind_seq, type, amount, balance_before, balance_after,
                                description, category, metadata, actor_user_id, actor_ip, idempotency_key,
                                created_at)
      SELECT u.id, acct, u.seq, u.kind, u.kseq, u.type, u.amount, u.before, u.before + u.amount, u.descr, u.cat,
             u.meta, u.actor, u.ip, u.key, u.at
        FROM unnest(e_id, e_seq, e_kind, e_kseq, e_type, e_amount, e_before, e_desc, e_cat, e_meta, e_actor,
                    e_ip, e_key, e_at)
             AS u(id, seq, kind, kseq, type, amount, before, descr, cat, meta, actor, ip, key, at);
      UPDATE credit_grant cg SET remaining = u.rem
        FROM unnest(g_ids, g_rem, g_orig) AS u(gid, rem, orig)
       WHERE cg.id = u.gid AND u.rem <> u.orig;
      INSERT INTO grant_consumption (entry_id, grant_id, amount)
      SELECT * FROM unnest(c_entry, c_grant, c_amount);
      e_id := '{}'; e_seq := '{}'; e_kind := '{}'; e_kseq := '{}'; e_type := '{}'; e_amount := '{}';
      e_before := '{}'; e_desc := '{}'; e_cat := '{}'; e_meta := '{}'; e_actor := '{}'; e_ip := '{}';
      e_key := '{}'; e_at := '{}'; c_entry := '{}'; c_grant := '{}'; c_amount := '{}';
      g_orig := g_rem;
    END IF;
    IF p.i = -1 OR acct IS DISTINCT FROM p.account_id THEN
      IF moved > 0 THEN
        UPDATE credit_account a
           SET balance = bal, lifetime_added = added, lifetime_consumed = consumed, transaction_count = tcount,
               topup_count = n_topup, usage_count = n_usage, refund_count = n_refund,
               adjustment_count = n_adjust, version = a.version + moved, updated_at = last_at
         WHERE a.id = acct;
      END IF;
      EXIT WHEN p.i = -1;
      acct := p.account_id;
      moved := 0;
      g_loaded := false;
      SELECT a.balance, a.transaction_count, a.lifetime_added, a.lifetime_consumed,
             a.topup_count, a.usage_count, a.refund_count, a.adjustment_count
        INTO bal, tcount, added, consumed, n_topup, n_usage, n_refund, n_adjust
        FROM credit_account a WHERE a.id = acct FOR NO KEY UPDATE;
      acct_found := FOUND;
    END IF;

    i := p.i; status := NULL; id := NULL; account_id := p.account_id; seq := NULL; type := NULL;
    source := NULL; amount := NULL; balance_before := NULL; balance_after := NULL; description := NULL;
    category := NULL; metadata := NULL; actor_user_id := NULL; actor_ip := NULL; idempotency_key := NULL;
    created_at := NULL;

    IF NOT acct_found THEN
      status := 'no_account';
      RETURN NEXT;
      CONTINUE;
    END IF;

    IF p.idempotency_key IS NOT NULL THEN  -- read under the row lock: a racing writer has committed
      k := array_position(e_key, p.idempotency_key);
      IF k IS NOT NULL THEN  -- an earlier posting of this group, not written yet
        status := 'replayed'; id := e_id[k]; seq := e_seq[k]; type := e_type[k]; amount := e_amount[k];
        balance_before := e_before[k]; balance_after := e_before[k] + e_amount[k]; description := e_desc[k];
        category := e_cat[k]; metadata := e_meta[k]; actor_user_id := e_actor[k]; actor_ip := e_ip[k];
        idempotency_key := e_key[k]; created_at := e_at[k];
        RETURN NEXT;
        CONTINUE;
      END IF;
      -- The range and the ORDER BY make the (account_id, idempotency_key) index the only plan without a
      -- sort: with plain equalities, a table without planner statistics yet gets the kind_seq index and
      -- a scan of all the account's entries per lookup.
      SELECT e.id, e.seq, e.type, e.source, e.amount, e.balance_before, e.balance_after, e.description,
             e.category, e.metadata, e.actor_user_id, e.actor_ip, e.idempotency_key, e.created_at
        INTO id, seq, type, source, amount, balance_before, balance_after, description,
             category, metadata, actor_user_id, actor_ip, idempotency_key, created_at
        FROM ledger_entry e
       WHERE e.account_id = acct AND e.idempotency_key >= p.idempotency_key AND e.idempotency_key <= p.idempotency_key
       ORDER BY e.idempotency_key LIMIT 1;
      IF FOUND THEN
        status := 'replayed';
        RETURN NEXT;
        CONTINUE;
      END IF;
    END IF;

    IF bal + p.amount < p.floor THEN
      status := 'refused';
      balance_after := bal;
      RETURN NEXT;
      CONTINUE;
    END IF;

    tcount := tcount + 1;
    IF p.kind = 'topup' THEN n_topup := n_topup + 1; kseq := n_topup;
    ELSIF p.kind = 'usage' THEN n_usage := n_usage + 1; kseq := n_usage;
    ELSIF p.kind = 'refund' THEN n_refund := n_refund + 1; kseq := n_refund;
    ELSE n_adjust := n_adjust + 1; kseq := n_adjust;
    END IF;
    new_id := nextval(entry_seq);
    plain := p.amount < 0 AND p.from_grant IS NULL AND p.checkout_session_id IS NULL;

    IF plain THEN
      -- a plain debit: consumes the grants in burn order (class, earliest expiry, none last, oldest),
      -- here in memory; what no grant covers is debt. Written at the next flush.
      IF NOT g_loaded THEN
        SELECT COALESCE(array_agg(cg.id ORDER BY cg.priority, cg.expires_at IS NULL, cg.expires_at, cg.id), '{}'),
               COALESCE(array_agg(cg.remaining ORDER BY cg.priority, cg.expires_at IS NULL, cg.expires_at, cg.id),
                        '{}')
          INTO g_ids, g_rem
          FROM credit_grant cg WHERE cg.account_id = acct AND cg.remaining > 0;
        g_orig := g_rem; g_at := 1; g_loaded := true;
      END IF;
      need := -p.amount;
      WHILE need > 0 AND g_at <= cardinality(g_ids) LOOP
        take := LEAST(g_rem[g_at], need);
        IF take > 0 THEN
          c_entry := c_entry || new_id; c_grant := c_grant || g_ids[g_at]; c_amount := c_amount || take;
          g_rem[g_at] := g_rem[g_at] - take;
          need := need - take;
        END IF;
        IF g_rem[g_at] = 0 THEN g_at := g_at + 1; END IF;
      END LOOP;
      -- its entry waits for the flush, with the others of the run
      e_id := e_id || new_id; e_seq := e_seq || tcount; e_kind := e_kind || p.kind; e_kseq := e_kseq || kseq;
      e_type := e_type || p.type; e_amount := e_amount || p.amount; e_before := e_before || bal;
      e_desc := e_desc || p.description; e_cat := e_cat || p.category;
      e_meta := e_meta || COALESCE(p.metadata, '{}'::jsonb); e_actor := e_actor || p.actor_user_id;
      e_ip := e_ip || p.actor_ip; e_key := e_key || p.idempotency_key; e_at := e_at || p.created_at;
    ELSE
      INSERT INTO ledger_entry (id, account_id, seq, kind, kind_seq, type, source, amount, balance_before,
                                balance_after, description, category, metadata, actor_user_id, actor_ip,
                                idempotency_key, created_at)
      VALUES (new_id, acct, tcount, p.kind, kseq, p.type, p.source, p.amount, bal, bal + p.amount, p.description,
              p.category, COALESCE(p.metadata, '{}'::jsonb), p.actor_user_id, p.actor_ip, p.idempotency_key,
              p.created_at);
      g_loaded := false;  -- a new grant, or a burn in another order: read the grants again
      IF p.amount > 0 THEN
        -- the credit's grant: what it adds pays the account's debt first
        INSERT INTO credit_grant (account_id, entry_id, source, priority, amount, remaining, expires_at,
                                  checkout_session_id, created_at)
        VALUES (acct, new_id, p.source, p.priority, p.amount, GREATEST(0, LEAST(p.amount, bal + p.amount)),
                p.expires_at, p.checkout_session_id, p.created_at);
      ELSE
        -- a refund or dispute takes from its purchase's own grants first; an expiry from its grant only
        need := -p.amount;
        FOR g IN
          SELECT cg.id, cg.remaining FROM credit_grant cg
           WHERE cg.account_id = acct AND cg.remaining > 0 AND (p.from_grant IS NULL OR cg.id = p.from_grant)
           ORDER BY CASE WHEN cg.checkout_session_id = p.checkout_session_id THEN 0 ELSE 1 END, cg.priority,
                    cg.expires_at IS NULL, cg.expires_at, cg.id
        LOOP
          take := LEAST(g.remaining, need);
          UPDATE credit_grant cg SET remaining = cg.remaining - take WHERE cg.id = g.id;
          INSERT INTO grant_consumption (entry_id, grant_id, amount) VALUES (new_id, g.id, take);
          need := need - take;
          EXIT WHEN need <= 0;
        END LOOP;
      END IF;
    END IF;

    IF p.amount > 0 THEN
      added := added + p.amount;
    ELSE
      consumed := consumed - p.amount;
    END IF;
    IF p.kind = 'usage' THEN
      r_acct := r_acct || acct; r_day := r_day || p.day; r_cat := r_cat || COALESCE(p.category, 'other');
      r_amount := r_amount || -p.amount;
    END IF;
    status := 'posted'; id := new_id; seq := tcount; type := p.type; source := p.source;
    amount := p.amount; balance_before := bal; balance_after := bal + p.amount; description := p.description;
    category := p.category; metadata := COALESCE(p.metadata, '{}'::jsonb); actor_user_id := p.actor_user_id;
    actor_ip := p.actor_ip; idempotency_key := p.idempotency_key; created_at := p.created_at;
    bal := bal + p.amount;
    moved := moved + 1;
    last_at := p.created_at;
    RETURN NEXT;
  END LOOP;

  IF cardinality(r_acct) > 0 THEN  -- the day's usage per category, once per group
    INSERT INTO usage_rollup AS r (account_id, day, category, amount, count)
    SELECT u.a, u.d, u.c, SUM(u.m), COUNT(*) FROM unnest(r_acct, r_day, r_cat, r_amount) AS u(a, d, c, m)
     GROUP BY u.a, u.d, u.c
    ON CONFLICT (account_id, day, category)
    DO UPDATE SET amount = r.amount + excluded.amount, count = r.count + excluded.count;
  END IF;
END
$fn$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LEDGER_POST)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS ledger_post(jsonb, text)")
