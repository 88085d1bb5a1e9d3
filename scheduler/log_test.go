package scheduler

import "testing"

// TestLogKeysAreTheInterface pins the key strings: operators' queries, the
// end-to-end tests and the soak match them, so a constant renamed must keep its
// string.
func TestLogKeysAreTheInterface(t *testing.T) {
	for key, want := range map[string]string{
		LogKeyPolicy: "policy", LogKeySlot: "slot", LogKeyRunID: "run_id", LogKeyTrigger: "trigger",
		LogKeyServerID: "server_id", LogKeyServerName: "server_name", LogKeyImageID: "image_id",
		LogKeyImageName: "image_name", LogKeyImageRow: "image_row", LogKeySnapshotID: "snapshot_id",
		LogKeyDrillServerID: "drill_server_id", LogKeyJournalRow: "journal_row", LogKeyHook: "hook",
		LogKeyOwner: "owner", LogKeyConfigVersion: "config_version", LogKeyCommand: "command",
		LogKeyOutcome: "outcome", LogKeyResult: "result", LogKeyReason: "reason", LogKeyDetail: "detail",
		LogKeyDuration: "duration", LogKeyErr: "err",
	} {
		if key != want {
			t.Errorf("log key %q, want %q", key, want)
		}
	}
}
