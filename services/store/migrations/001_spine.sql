-- The spine: workspaces, tokens, the permanent dedupe index, rejected input,
-- projector positions and the contact read model.

CREATE TABLE workspaces (
    id          text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Only a SHA-256 of each token is kept.
CREATE TABLE tokens (
    hash        bytea PRIMARY KEY,
    workspace   text NOT NULL REFERENCES workspaces (id),
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- (workspace, source, id) -> the log sequence of the first stored copy, for ever.
CREATE TABLE event_index (
    workspace   text NOT NULL,
    source      text NOT NULL,
    id          text NOT NULL,
    seq         bigint NOT NULL,
    PRIMARY KEY (workspace, source, id)
);

CREATE TABLE rejected (
    id          bigserial PRIMARY KEY,
    workspace   text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    via         text NOT NULL,
    reason      text NOT NULL,
    body        bytea NOT NULL
);
CREATE INDEX rejected_by_workspace ON rejected (workspace, id DESC);

-- One row per projector: the last log sequence whose effects are committed.
CREATE TABLE projector_positions (
    name        text PRIMARY KEY,
    position    bigint NOT NULL DEFAULT 0,
    applied     bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projector_positions (name) VALUES ('main');

CREATE TABLE contacts (
    workspace                 text NOT NULL,
    contact                   text NOT NULL,
    stage                     text,
    status                    text NOT NULL,
    touches_before_conversion int,
    state                     jsonb NOT NULL,
    reached_aware             timestamptz,
    reached_interested        timestamptz,
    reached_lead              timestamptz,
    reached_qualified         timestamptz,
    reached_opportunity       timestamptz,
    reached_customer          timestamptz,
    PRIMARY KEY (workspace, contact)
);
CREATE INDEX contacts_by_stage ON contacts (workspace, stage, contact);
CREATE INDEX contacts_by_status ON contacts (workspace, status, contact);

-- Each running service beats here; /v1/health is ready when every kind has a fresh beat.
CREATE TABLE service_heartbeats (
    service     text NOT NULL,
    instance    text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, instance)
);
