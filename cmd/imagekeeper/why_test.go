package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
	"github.com/imagekeeper/imagekeeper/store/storetest"
)

// TestWhyAnswersForCompactedImages: once lineage_retention moved a deleted image's
// row to the archive, `why` still explains it and says it was compacted.
func TestWhyAnswersForCompactedImages(t *testing.T) {
	env := newLineageEnv(t)
	env.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: []string{"backup=daily"}})
	if code, out, errOut := env.cli(t, "run", "--config", env.config, "--policy", "web"); code != 0 {
		t.Fatalf("run: exit %d\n%s\n%s", code, out, errOut)
	}
	_, out, _ := env.cli(t, "images", "--config", env.config, "-o", "json")
	var ims []imageJSON
	if err := json.Unmarshal([]byte(out), &ims); err != nil || len(ims) != 1 {
		t.Fatalf("images: %v\n%s", err, out)
	}
	id := ims[0].ImageID
	// Deleted long ago (as the journal leaves a row), then compacted.
	db, err := sql.Open("sqlite3", "file:"+env.state+"?_busy_timeout=10000")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE images SET state = 'deleted', delete_reason = 'no rule keeps it',
		deleted_at = '2026-01-01T00:00:00.000000000Z' WHERE image_id = ?`, id); err != nil {
		t.Fatal(err)
	}
	db.Close()
	ctx := context.Background()
	st := storetest.MustOpenAt(t, env.state, nil)
	moved, err := st.CompactLineage(ctx, time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC))
	st.Close()
	if err != nil || moved != 1 {
		t.Fatalf("CompactLineage = %d, %v", moved, err)
	}

	code, out, errOut := env.cli(t, "why", "--config", env.config, id)
	if code != 0 {
		t.Fatalf("why: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"image " + id, "compacted: its lineage row was moved to the archive", "deletion:  no rule keeps it",
		"intent recorded"} {
		if !strings.Contains(out, want) {
			t.Errorf("why of a compacted image lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = env.cli(t, "why", "--config", env.config, "-o", "json", id)
	var j struct {
		Image  map[string]any `json:"image"`
		Events []eventJSON    `json:"events"`
	}
	if err := json.Unmarshal([]byte(out), &j); code != 0 || err != nil || j.Image["compacted"] != true || len(j.Events) == 0 {
		t.Errorf("why -o json of a compacted image: exit %d, %v\n%s", code, err, out)
	}
}
