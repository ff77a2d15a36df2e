-- The whole-workspace funnel without aggregating every contact on each request
-- (projections/funnel.py): per workspace and stage, how many contacts reached it, by bucket of
-- their gap from the previous stage (stage 0, aware, in bucket 0). Kept by the contact
-- projection in its own transaction; a bucket that empties is deleted.
CREATE TABLE funnel_gaps (
    workspace  text NOT NULL,
    stage      smallint NOT NULL,
    bucket     bigint NOT NULL,
    contacts   bigint NOT NULL,
    PRIMARY KEY (workspace, stage, bucket)
);

-- Contacts per stage (goals' derived numbers) now come from these counters: the two indexes
-- that counted opportunities and customers only cost the projector writes.
DROP INDEX IF EXISTS contacts_by_opportunity;
DROP INDEX IF EXISTS contacts_by_customer;

-- The exact gaps of the median's bucket, in order, for each stage.
CREATE INDEX contacts_gap_interested ON contacts (workspace, (reached_interested - reached_aware))
    WHERE reached_interested IS NOT NULL;
CREATE INDEX contacts_gap_lead ON contacts (workspace, (reached_lead - reached_interested))
    WHERE reached_lead IS NOT NULL;
CREATE INDEX contacts_gap_qualified ON contacts (workspace, (reached_qualified - reached_lead))
    WHERE reached_qualified IS NOT NULL;
CREATE INDEX contacts_gap_opportunity ON contacts (workspace, (reached_opportunity - reached_qualified))
    WHERE reached_opportunity IS NOT NULL;
CREATE INDEX contacts_gap_customer ON contacts (workspace, (reached_customer - reached_opportunity))
    WHERE reached_customer IS NOT NULL;

-- The counters of the contacts already stored; the bucket as projections.funnel.gap_bucket:
-- shift = max(0, bit length of the gap in µs - 5), bucket = shift * 32 + (gap >> shift).
CREATE FUNCTION pg_temp.gap_bucket(earlier timestamptz, later timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT (shift::bigint << 5) + (gap >> shift)
    FROM (SELECT gap, greatest(0, length(ltrim(gap::bit(64)::text, '0')) - 5) AS shift
          FROM (SELECT (extract(epoch FROM later - earlier) * 1000000)::bigint AS gap) AS g) AS s
$$;

INSERT INTO funnel_gaps (workspace, stage, bucket, contacts)
SELECT workspace, 0, 0, count(*) FROM contacts WHERE reached_aware IS NOT NULL GROUP BY workspace
UNION ALL
SELECT c.workspace, s.stage, pg_temp.gap_bucket(s.earlier, s.later), count(*)
FROM contacts c CROSS JOIN LATERAL (VALUES
    (1, c.reached_aware, c.reached_interested), (2, c.reached_interested, c.reached_lead),
    (3, c.reached_lead, c.reached_qualified), (4, c.reached_qualified, c.reached_opportunity),
    (5, c.reached_opportunity, c.reached_customer)) AS s (stage, earlier, later)
WHERE s.later IS NOT NULL
GROUP BY 1, 2, 3;

DROP FUNCTION pg_temp.gap_bucket(timestamptz, timestamptz);

-- Counters are rewritten by every projector batch and by every rebuild's swap: let autovacuum
-- visit the table as soon as a few thousand versions are dead, not at 20 % of it.
ALTER TABLE funnel_gaps SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
                             autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 2000);
