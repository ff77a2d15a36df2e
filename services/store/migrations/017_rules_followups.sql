-- Which contact each follow-up is about, as the rules worker learned it from the log's
-- followup.requested (services/rules/logic.py, RulesState.followup_contacts). A followup.dismissed
-- names its follow-up by id; when its subject is another contact, the worker finds here whose
-- open follow-up it closes, as the followups read model marks it dismissed. Loaded per batch for
-- the dismissals it holds only.
CREATE TABLE rules_followups (
    workspace   text NOT NULL,
    followup_id text NOT NULL,
    contact     text NOT NULL,
    PRIMARY KEY (workspace, followup_id)
);

-- The follow-ups a rules state from before this table holds open.
INSERT INTO rules_followups (workspace, followup_id, contact)
SELECT r.workspace, open_id, r.contact
FROM rules_contacts AS r, jsonb_object_keys(coalesce(r.state->'open', '{}'::jsonb)) AS open_id
ON CONFLICT DO NOTHING;
