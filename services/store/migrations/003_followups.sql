-- Follow-ups and alerts (CONTRACT.md section 6): the rules worker's decision state and position,
-- per-workspace rule and webhook settings, webhook deliveries, and the follow-up and alert
-- read models (maintained by the projector, rebuilt by replay).

-- The rules worker's position in the log. Not in projector_positions: min_seq waits for every
-- read model, and the rules worker is not one.
CREATE TABLE rules_positions (
    name        text PRIMARY KEY,
    position    bigint NOT NULL DEFAULT 0,
    applied     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO rules_positions (name) VALUES ('main');

CREATE TABLE rules_contacts (
    workspace   text NOT NULL,
    contact     text NOT NULL,
    state       jsonb NOT NULL,
    PRIMARY KEY (workspace, contact)
);

CREATE TABLE rules_workspaces (
    workspace   text PRIMARY KEY,
    state       jsonb NOT NULL
);

CREATE TABLE rule_settings (
    workspace   text PRIMARY KEY,
    disabled    text[] NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One outbound webhook per workspace; the secret signs every delivery.
CREATE TABLE webhooks (
    workspace       text PRIMARY KEY,
    url             text NOT NULL,
    secret          text NOT NULL,
    max_attempts    int NOT NULL DEFAULT 8,
    backoff_seconds double precision[] NOT NULL DEFAULT '{5,30,120,600,1800,3600,7200}',
    timeout_seconds double precision NOT NULL DEFAULT 10,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Each follow-up or alert delivered (or parked) once.
CREATE TABLE webhook_deliveries (
    workspace     text NOT NULL,
    item_id       text NOT NULL,
    status        text NOT NULL,          -- delivered | failing | parked
    attempts      int NOT NULL DEFAULT 0,
    last_error    text,
    last_status   int,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace, item_id)
);

-- The follow-up read model. A dismissal may be applied before its request (replay of any
-- order), so a row can exist with requested = false; lists show requested rows only.
CREATE TABLE followups (
    workspace         text NOT NULL,
    followup_id       text NOT NULL,
    contact           text NOT NULL,
    requested         boolean NOT NULL DEFAULT false,
    dismissed         boolean NOT NULL DEFAULT false,
    rule              text,
    reason            text,
    due_at            timestamptz,
    trigger_time      timestamptz,
    caused_by_source  text,
    caused_by_id      text,
    PRIMARY KEY (workspace, followup_id)
);
CREATE INDEX followups_by_contact ON followups (workspace, contact);
CREATE INDEX followups_by_due ON followups (workspace, due_at, followup_id);

-- Each contact's latest sales touch: a follow-up is done once one is at or after its trigger.
CREATE TABLE followup_sales (
    workspace       text NOT NULL,
    contact         text NOT NULL,
    last_sales_at   timestamptz NOT NULL,
    PRIMARY KEY (workspace, contact)
);

CREATE TABLE alerts (
    workspace         text NOT NULL,
    alert_id          text NOT NULL,
    rule              text NOT NULL,
    reason            text NOT NULL,
    at                timestamptz NOT NULL,
    campaign_id       text,
    goal_id           text,
    caused_by_source  text,
    caused_by_id      text,
    PRIMARY KEY (workspace, alert_id)
);
CREATE INDEX alerts_newest ON alerts (workspace, at DESC, alert_id);
