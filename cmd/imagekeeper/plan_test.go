package main

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/imagekeeper/imagekeeper/cloud/simcloud"
)

// TestPlanAndCheckCloudWarnOfAnEmptySelection: a policy whose selector matches no
// server (a typo, retagged servers) is a warning in plan and in validate
// --check-cloud (exit 1), and validate --check-cloud counts what each policy
// selects once it matches. The old plan printed "servers selected now: 0" and
// nothing else; validate had no way to ask the cloud.
func TestPlanAndCheckCloudWarnOfAnEmptySelection(t *testing.T) {
	env := newLineageEnv(t)
	env.sim.AddServer(simcloud.ServerSpec{Name: "web-1", Tags: []string{"backup=dialy"}}) // the typo is on the server
	const warning = "selects no server now (select: tags=[backup=daily]): every slot would be empty and back up nothing"

	code, out, errOut := env.cli(t, "plan", "--config", env.config)
	if code != 0 || !strings.Contains(out, "  servers selected now: 0\n  WARNING: "+warning) {
		t.Fatalf("plan: exit %d\n%s\n%s", code, out, errOut)
	}

	code, out, errOut = env.cli(t, "validate", "--config", env.config, "--check-cloud")
	if code != exitFailure || !strings.Contains(out, "  selects now: 0 servers\n") ||
		!strings.Contains(errOut, "warning: policy web "+warning) || !strings.Contains(errOut, "1 policy selects no server now") {
		t.Fatalf("validate --check-cloud with an empty selection: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	env.sim.AddServer(simcloud.ServerSpec{Name: "web-2", Tags: []string{"backup=daily"}})
	code, out, errOut = env.cli(t, "validate", "--config", env.config, "--check-cloud")
	if code != 0 || !strings.Contains(out, "  selects now: 1 server\n") || errOut != "" {
		t.Fatalf("validate --check-cloud: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if code, out, _ := env.cli(t, "validate", "--config", env.config); code != 0 || strings.Contains(out, "selects now") {
		t.Fatalf("validate without --check-cloud asked the cloud: exit %d\n%s", code, out)
	}
}

func TestPlanCommand(t *testing.T) {
	env := newRetentionEnv(t)
	env.now = func() time.Time { return time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC) }
	images := env.sim.Images()
	env.sim.AddServer(simcloud.ServerSpec{Name: "zz-broken", Tags: []string{"backup=nightly"}, Status: "ERROR"})

	code, out, errOut := env.cli(t, "plan", "--config", env.config, "--horizon", "3d")
	if code != 0 {
		t.Fatalf("plan: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, re := range []string{
		`(?m)^policy nightly: schedule "30 2 \* \* \*" in Asia/Shanghai$`,
		// 12:00 UTC is 20:00 in Shanghai: the next slot is 02:30 CST on Dec 2.
		`(?m)^  next slots: 2026-12-02 02:30 CST, 2026-12-03 02:30 CST, 2026-12-04 02:30 CST, 2026-12-05 02:30 CST, 2026-12-06 02:30 CST$`,
		`(?m)^  servers selected now: 3$`,
		`(?m)^    app\s+\S+\s+app-1202$`,
		`(?m)^    zz-broken\s+\S+\s+\(server in ERROR: skipped until it recovers\)$`,
		`(?m)^  retention today: 4 images, 2 would be deleted$`,
		`(?m)^  horizon 3d: 3 slots, 6 images created, 8 deleted$`,
		// The first simulated prune drops both servers' remaining old images too.
		`(?m)^    2026-12-02 02:30 CST  \+2  -4: `,
		// Within a step deletions are listed by server id, which the simulator draws
		// at random: either order.
		`(?m)^    2026-12-04 02:30 CST  \+2  -2: (app-1203, db-1203|db-1203, app-1203)$`,
		// The server in ERROR gets no image, so nothing of it shows at the end.
		`(?m)^  images per server at the end: app 1, db 1$`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("plan output does not match %s:\n%s", re, out)
		}
	}
	if !reflect.DeepEqual(env.sim.Images(), images) {
		t.Fatal("plan changed the cloud")
	}

	// Without a lineage, plan says so and creates no database.
	dir := t.TempDir()
	fresh := filepath.Join(dir, "none.db")
	cfg2 := writeFile(t, filepath.Join(dir, "fresh.yaml"), fmt.Sprintf(retentionCLIConfig, fresh, 1))
	code, out, _ = env.cli(t, "plan", "--config", cfg2, "-o", "json")
	if code != 0 || !strings.Contains(out, "no lineage yet") {
		t.Fatalf("plan without lineage: exit %d\n%s", code, out)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Fatalf("plan created the database: %v", err)
	}
	if code, _, _ := env.cli(t, "plan", "--config", cfg2, "--horizon", "soon"); code != exitUsage {
		t.Errorf("plan --horizon soon: exit %d, want %d", code, exitUsage)
	}
}

// TestPruneSummaryWords checks the summary line counts in words, one and many.
