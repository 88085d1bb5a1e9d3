package scheduler

// Log attribute keys. Every line about one thing carries it under the same key,
// so that one query (`policy=web-daily`, `.image_id == "..."`) finds every line
// about it, whichever component or command logged it. The strings are an
// interface: operators' queries, the tests and the soak match them.
const (
	// LogKeyPolicy names the policy.
	LogKeyPolicy = "policy"
	// LogKeySlot is the slot, as StampSlot writes it.
	LogKeySlot = "slot"
	// LogKeyRunID identifies one slot run (also the RunID of its templates).
	LogKeyRunID = "run_id"
	// LogKeyTrigger says why a slot runs (scheduled, catch_up, manual).
	LogKeyTrigger = "trigger"
	// LogKeyServerID and LogKeyServerName name a server being imaged.
	LogKeyServerID   = "server_id"
	LogKeyServerName = "server_name"
	// LogKeyImageID and LogKeyImageName name a Glance image.
	LogKeyImageID   = "image_id"
	LogKeyImageName = "image_name"
	// LogKeyImageRow is the lineage row of an image.
	LogKeyImageRow = "image_row"
	// LogKeySnapshotID is a Cinder volume snapshot.
	LogKeySnapshotID = "snapshot_id"
	// LogKeyDrillServerID is the server a restore drill booted.
	LogKeyDrillServerID = "drill_server_id"
	// LogKeyJournalRow is the row of the hook journal.
	LogKeyJournalRow = "journal_row"
	// LogKeyHook is a hook's name (pre or post).
	LogKeyHook = "hook"
	// LogKeyOwner is the installation's owner id (the lineage's).
	LogKeyOwner = "owner"
	// LogKeyConfigVersion is the version of a loaded config.
	LogKeyConfigVersion = "config_version"
	// LogKeyCommand is the CLI command a line comes from.
	LogKeyCommand = "command"
	// LogKeyOutcome is a slot's outcome; LogKeyResult the result of one step
	// (an image, a hook, a drill).
	LogKeyOutcome = "outcome"
	LogKeyResult  = "result"
	// LogKeyReason is a reason code or a failure's reason; LogKeyDetail words it.
	LogKeyReason = "reason"
	LogKeyDetail = "detail"
	// LogKeyDuration is how long something took, as a duration string.
	LogKeyDuration = "duration"
	// LogKeyErr is an error.
	LogKeyErr = "err"
)
