-- The NATS inbox reader's position in TOUCHLINE_INBOX (now a Limits stream read by an ordered
-- consumer, services/inbox.py): the last inbox sequence whose events are in the log or the
-- rejected list. Moved in the same transaction as the rejected rows it writes; locked FOR UPDATE
-- while a batch is handled, so a second API process running the reader waits, then is fenced.
CREATE TABLE inbox_positions (
    name        text PRIMARY KEY,
    position    bigint NOT NULL DEFAULT 0,
    applied     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO inbox_positions (name) VALUES ('main');
