package main

import (
	"strings"
	"testing"

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
