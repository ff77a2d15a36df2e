-- The rules worker's earliest applied deal.won of each deal (services/rules/logic.py, RulesState.deals):
-- its goal facts count that report, and move the deal when an earlier one is applied. Deal ids are one
-- namespace per workspace, as in the deals read model. Kept apart from rules_workspaces so a batch
-- loads only the deals it reports. Deals won under an older rules state have no row here: the rules
-- keep counting their first report in log order until `touchline rules reset` (docs/followups.md).
CREATE TABLE rules_deals (
    workspace   text NOT NULL,
    deal_id     text NOT NULL,
    state       jsonb NOT NULL,
    PRIMARY KEY (workspace, deal_id)
);
