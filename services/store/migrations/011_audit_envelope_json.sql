-- The audit trail keeps each envelope as the JSON text it came in (json), no longer as jsonb: the
-- projector wrote it by COPY at ~7.5 µs a row, a third of which was PostgreSQL converting the
-- text to jsonb, which nothing reads (the trail is always returned whole, as text). Existing rows
-- are rewritten once, in jsonb's normalised form.
ALTER TABLE contact_events ALTER COLUMN envelope TYPE json USING envelope::json;
