-- The read models of funnel, touches, goals and attribution (CONTRACT.md sections 4 and 5).
-- Identifiers that take part in the contract's order (time, source, id) use the "C"
-- collation, so PostgreSQL compares them as Python does (by code point).

-- The funnel's campaign filter: the campaign of the contact's earliest marketing touch that names one.
ALTER TABLE contacts ADD COLUMN first_campaign text;
UPDATE contacts SET first_campaign = state -> 'first_campaign' ->> 3 WHERE state ? 'first_campaign';

-- Funnel cohorts by reached[aware], answered from the index alone.
CREATE INDEX contacts_funnel ON contacts (workspace, reached_aware)
    INCLUDE (first_campaign, reached_interested, reached_lead, reached_qualified, reached_opportunity, reached_customer)
    WHERE reached_aware IS NOT NULL;
CREATE INDEX contacts_funnel_by_campaign ON contacts (workspace, first_campaign, reached_aware)
    INCLUDE (reached_interested, reached_lead, reached_qualified, reached_opportunity, reached_customer)
    WHERE first_campaign IS NOT NULL;
-- Goals: leads in a period; attribution: lead conversions.
CREATE INDEX contacts_by_lead ON contacts (workspace, reached_lead) WHERE reached_lead IS NOT NULL;
CREATE INDEX contacts_by_opportunity ON contacts (workspace, reached_opportunity) WHERE reached_opportunity IS NOT NULL;
CREATE INDEX contacts_by_customer ON contacts (workspace, reached_customer) WHERE reached_customer IS NOT NULL;
-- Touch statistics: the histogram of touches before conversion.
CREATE INDEX contacts_by_touches_before_conversion ON contacts (workspace, touches_before_conversion)
    WHERE touches_before_conversion IS NOT NULL;

-- Each deal as won by its earliest deal.won (by time, source, id).
CREATE TABLE deals (
    workspace   text NOT NULL,
    deal_id     text NOT NULL,
    contact     text NOT NULL,
    won_at      timestamptz NOT NULL,
    source      text COLLATE "C" NOT NULL,
    id          text COLLATE "C" NOT NULL,
    amount      numeric NOT NULL,
    currency    text NOT NULL,
    PRIMARY KEY (workspace, deal_id)
);
CREATE INDEX deals_by_won_at ON deals (workspace, won_at) INCLUDE (amount, currency);

-- Every refund.
CREATE TABLE refunds (
    workspace   text NOT NULL,
    source      text NOT NULL,
    id          text NOT NULL,
    deal_id     text NOT NULL,
    contact     text NOT NULL,
    at          timestamptz NOT NULL,
    amount      numeric NOT NULL,
    currency    text NOT NULL,
    PRIMARY KEY (workspace, source, id)
);
CREATE INDEX refunds_by_time ON refunds (workspace, currency, at) INCLUDE (amount);

-- Each goal as its latest goal.set defines it.
CREATE TABLE goals (
    workspace     text NOT NULL,
    goal_id       text NOT NULL,
    set_at        timestamptz NOT NULL,
    source        text COLLATE "C" NOT NULL,
    id            text COLLATE "C" NOT NULL,
    metric        text NOT NULL,
    target        numeric NOT NULL,
    currency      text,
    period_start  date NOT NULL,
    period_end    date NOT NULL,
    PRIMARY KEY (workspace, goal_id)
);

-- conversation.held events per UTC day (goal periods are whole UTC days).
CREATE TABLE conversation_days (
    workspace     text NOT NULL,
    day           date NOT NULL,
    conversations bigint NOT NULL,
    PRIMARY KEY (workspace, day)
);

-- Every touch, for attribution.
CREATE TABLE touch_events (
    workspace    text NOT NULL,
    source       text COLLATE "C" NOT NULL,
    id           text COLLATE "C" NOT NULL,
    contact      text NOT NULL,
    at           timestamptz NOT NULL,
    kind         text NOT NULL,
    channel      text NOT NULL,
    campaign_id  text,
    PRIMARY KEY (workspace, source, id)
);
CREATE INDEX touch_events_by_contact ON touch_events (workspace, contact, at)
    INCLUDE (kind, channel, campaign_id);

-- Touches per channel and kind.
CREATE TABLE touch_channels (
    workspace  text NOT NULL,
    channel    text NOT NULL,
    marketing  bigint NOT NULL DEFAULT 0,
    sales      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, channel)
);
