package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// notifySocket listens on a unixgram socket and returns its path and a function that
// reads the next datagram.
func notifySocket(t *testing.T) (string, func() string) {
	t.Helper()
	// sun_path is 108 bytes: t.TempDir() can be longer than that.
	dir, err := os.MkdirTemp("", "iknotify")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return path, func() string {
		t.Helper()
		buf := make([]byte, 4096)
		if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestNotifierMessagesInOrder(t *testing.T) {
	path, next := notifySocket(t)
	n := newNotifier(envOf(map[string]string{"NOTIFY_SOCKET": path}), os.Getpid())
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := n.Reloading(); err != nil {
		t.Fatal(err)
	}
	if err := n.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := n.Stopping(); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("first message = %q, want READY=1", got)
	}
	reload := next()
	lines := strings.Split(reload, "\n")
	if lines[0] != "RELOADING=1" || len(lines) != 2 || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("reload message = %q, want RELOADING=1 and MONOTONIC_USEC", reload)
	}
	usec, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64)
	if err != nil || usec <= 0 {
		t.Fatalf("MONOTONIC_USEC = %q: %v", lines[1], err)
	}
	// CLOCK_MONOTONIC, not the wall clock: it counts from boot, so it is far below
	// the Unix time in microseconds.
	if usec >= time.Now().UnixMicro()/2 {
		t.Fatalf("MONOTONIC_USEC %d looks like wall-clock time", usec)
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("after reload = %q, want READY=1", got)
	}
	if got := next(); got != "STOPPING=1" {
		t.Fatalf("last message = %q, want STOPPING=1", got)
	}
}

func TestNotifierWatchdog(t *testing.T) {
	path, next := notifySocket(t)
	n := newNotifier(envOf(map[string]string{"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000",
		"WATCHDOG_PID": strconv.Itoa(os.Getpid())}), os.Getpid())
	if n.watchdog != 10*time.Millisecond {
		t.Fatalf("watchdog interval = %v, want half of WATCHDOG_USEC (10ms)", n.watchdog)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.runWatchdog(ctx, func() bool { return true }); close(done) }()
	for range 3 {
		if got := next(); got != "WATCHDOG=1" {
			t.Fatalf("got %q, want WATCHDOG=1", got)
		}
	}
	cancel()
	<-done
}

func TestNotifierWatchdogForAnotherPID(t *testing.T) {
	n := newNotifier(envOf(map[string]string{"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "20000",
		"WATCHDOG_PID": "1"}), os.Getpid()+1)
	if n.watchdog != 0 {
		t.Fatalf("pinging for pid 1's watchdog: interval %v", n.watchdog)
	}
}

func TestNotifierWithoutSocketIsNoop(t *testing.T) {
	n := newNotifier(envOf(nil), os.Getpid())
	sent, err := n.send("READY=1")
	if sent || err != nil {
		t.Fatalf("send without NOTIFY_SOCKET: sent=%v err=%v", sent, err)
	}
}

func TestNotifierAbstractSocket(t *testing.T) {
	name := "@imagekeeper-test-" + strconv.Itoa(os.Getpid())
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Skipf("abstract sockets unavailable: %v", err)
	}
	defer conn.Close()
	n := newNotifier(envOf(map[string]string{"NOTIFY_SOCKET": name}), os.Getpid())
	if err := n.Stopping(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	k, err := conn.Read(buf)
	if err != nil || string(buf[:k]) != "STOPPING=1" {
		t.Fatalf("abstract socket got %q, %v", buf[:k], err)
	}
}
