package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestVersionFromLdflags builds the binary as the package build does and checks
// that `version` and `--version` report the version and revision it was given.
func TestVersionFromLdflags(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go tool not found: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "imagekeeper")
	build := exec.Command(goTool, "build", "-ldflags", "-X main.version=1.2.3 -X main.revision=0123456789ab", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	want := "imagekeeper 1.2.3 (revision 0123456789ab, " + runtime.Version() + ")\n"
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).Output()
		if err != nil || string(out) != want {
			t.Errorf("imagekeeper %s = %q, %v; want %q", arg, out, err, want)
		}
	}
	// Without -ldflags a build from a working tree says so rather than inventing one.
	if v := buildVersion(); v != "dev" && !strings.HasPrefix(v, "v") {
		t.Errorf("buildVersion() of the test binary = %q, want dev or a module version", v)
	}
}
