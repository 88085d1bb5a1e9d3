-- 0007_retention_index: retention planning (store.AppendRetentionRows) reads, for a
-- million rows, each row's slot and state and whether it is a plain good row of
-- this installation (owner, reason, failure). With those columns in the index the
-- walk never touches the table for a plain good row; SQLite seeks the table only for
-- the few other rows, whose every field the plan needs. It replaces
-- images_policy_server_slot (its prefix), so a write maintains one index, not two.
DROP INDEX images_policy_server_slot;
CREATE INDEX images_retention ON images (policy, server_id, slot DESC, state, owner, reason, failure);
