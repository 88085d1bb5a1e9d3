-- 0002_scale_indexes: indexes that fit the queries a daemon makes at scale (10,000
-- servers, a million lineage rows); store/plan_test.go checks with EXPLAIN QUERY
-- PLAN that each hot query uses the index meant for it.

-- The per-policy gauges (COUNT by state of one policy) read only this index, and the
-- settle query of a run (one policy's requested and creating rows) finds its few
-- rows here instead of walking the policy's whole lineage.
CREATE INDEX images_policy_state ON images (policy, state);

-- A run's existing rows of its own slot (a slot run again, resumed).
CREATE INDEX images_policy_slot ON images (policy, slot);

-- The newest good image of each server of a policy: MAX(requested_at) straight from
-- the index, without visiting the server's other rows.
CREATE INDEX images_good_server ON images (policy, server_id, requested_at) WHERE state = 'good';

-- The servers a slot imaged (the live servers of a policy's latest slot).
CREATE INDEX images_slot_id ON images (slot_id) WHERE slot_id IS NOT NULL;
