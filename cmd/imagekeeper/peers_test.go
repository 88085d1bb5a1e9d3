package main

import (
	"os"
	"os/exec"
	"testing"
)

// requireRealPeersEnv is the environment variable CI sets to 1 so that a test
// whose real peer program is missing fails instead of skipping: on a developer's
// machine a missing promtool is a skip, in CI it is a broken image.
const requireRealPeersEnv = "IMAGEKEEPER_REQUIRE_REAL_CLIENTS"

// requirePeer returns the path of the real peer program name (promtool,
// systemd-analyze, openstack, ...), or skips the test when it is not installed;
// with IMAGEKEEPER_REQUIRE_REAL_CLIENTS=1 a missing peer fails the test.
// install says how to get it (a Debian package), for the skip message.
func requirePeer(t *testing.T, name, install string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv(requireRealPeersEnv) == "1" {
			t.Fatalf("%s is required (%s=1): %v", name, requireRealPeersEnv, err)
		}
		t.Skipf("%s not installed (apt-get install %s): %v", name, install, err)
	}
	return path
}
