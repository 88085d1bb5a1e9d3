package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const unitPath = "../../systemd/imagekeeper.service"

// stagedUnit copies the unit into a temp dir with ExecStart pointing at an
// executable that exists here (verify refuses a missing binary).
func stagedUnit(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := strings.Replace(string(data), "ExecStart=/usr/local/bin/imagekeeper ", "ExecStart="+self+" ", 1)
	if unit == string(data) {
		t.Fatal("unit has no ExecStart=/usr/local/bin/imagekeeper line")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "imagekeeper.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestSystemdUnitDirectives pins the promises the unit makes to operators; it needs
// no systemd.
func TestSystemdUnitDirectives(t *testing.T) {
	data, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		have[strings.TrimSpace(line)] = true
	}
	for _, want := range []string{
		"Type=notify",
		"ExecStart=/usr/local/bin/imagekeeper daemon --config /etc/imagekeeper/imagekeeper.yaml",
		"ExecReload=/bin/kill -HUP $MAINPID",
		"EnvironmentFile=-/etc/default/imagekeeper",
		"User=imagekeeper", "Group=imagekeeper",
		"StateDirectory=imagekeeper", "ConfigurationDirectory=imagekeeper",
		"Restart=on-failure",
		"ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes", "PrivateDevices=yes",
		"NoNewPrivileges=yes", "CapabilityBoundingSet=",
		"RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallFilter=@system-service",
		"ProtectKernelTunables=yes", "ProtectControlGroups=yes", "LockPersonality=yes",
		"MemoryDenyWriteExecute=yes", "RestrictNamespaces=yes",
	} {
		if !have[want] {
			t.Errorf("unit lacks %q", want)
		}
	}
	// The stop timeout must outlast the default drain, or systemd kills a draining
	// daemon mid-run.
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\d+)min$`).FindStringSubmatch(string(data))
	if m == nil {
		t.Fatal("unit lacks TimeoutStopSec=<N>min")
	}
	if n, _ := strconv.Atoi(m[1]); float64(n)*60 <= defaultDrainTimeout.Seconds() {
		t.Errorf("TimeoutStopSec=%smin is not above the drain timeout %v", m[1], defaultDrainTimeout)
	}
	if !regexp.MustCompile(`(?m)^WatchdogSec=\S+$`).Match(data) {
		t.Error("unit lacks WatchdogSec")
	}
}

func TestSystemdUnitVerifies(t *testing.T) {
	sa := requirePeer(t, "systemd-analyze", "systemd")
	path := stagedUnit(t)
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// verify also prints warnings about other units of the host; only ours count.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "imagekeeper.service") {
			t.Errorf("verify: %s", line)
		}
	}
}

func TestSystemdUnitExposure(t *testing.T) {
	sa := requirePeer(t, "systemd-analyze", "systemd")
	path := stagedUnit(t)
	out, err := exec.Command(sa, "security", "--offline=true", path).CombinedOutput()
	if err != nil {
		// Older systemd has no --offline; the exposure report is informative only.
		t.Skipf("systemd-analyze security --offline: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for imagekeeper\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	level, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("systemd-analyze security: exposure %.1f", level)
	// The daemon needs the network and nothing else; anything above "OK" means a
	// hardening line was lost.
	if level > 2.0 {
		t.Errorf("exposure %.1f is above 2.0:\n%s", level, out)
	}
}
