package main

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"
)

// notifier speaks systemd's sd_notify protocol: one datagram per state change to the
// unix socket named by NOTIFY_SOCKET ('@' names an abstract socket, which Go's
// net package maps for us). Without NOTIFY_SOCKET every method is a no-op, so the
// daemon calls it unconditionally.
type notifier struct {
	addr *net.UnixAddr
	// watchdog is the ping interval: half of WATCHDOG_USEC, 0 when systemd wants none.
	watchdog time.Duration
}

// newNotifier reads NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID through getenv.
func newNotifier(getenv func(string) string, pid int) *notifier {
	n := &notifier{}
	if sock := getenv("NOTIFY_SOCKET"); sock != "" {
		n.addr = &net.UnixAddr{Name: sock, Net: "unixgram"}
	}
	// WATCHDOG_PID names the process systemd watches; a child that inherited the
	// variable must not ping for its parent.
	if wp := getenv("WATCHDOG_PID"); wp != "" && wp != strconv.Itoa(pid) {
		return n
	}
	if usec, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64); err == nil && usec > 0 {
		n.watchdog = time.Duration(usec) * time.Microsecond / 2
	}
	return n
}

// send writes one notification; it reports whether one was sent.
func (n *notifier) send(state string) (bool, error) {
	if n == nil || n.addr == nil {
		return false, nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return false, fmt.Errorf("sd_notify %s: %w", n.addr.Name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sd_notify %s: %w", n.addr.Name, err)
	}
	return true, nil
}

// Ready tells systemd the daemon is serving.
func (n *notifier) Ready() error { _, err := n.send("READY=1"); return err }

// Reloading tells systemd a reload began; Type=notify-reload needs the monotonic
// timestamp to match the reload with its READY=1.
func (n *notifier) Reloading() error {
	st := "RELOADING=1"
	if usec, ok := monotonicUsec(); ok {
		st += "\nMONOTONIC_USEC=" + strconv.FormatInt(usec, 10)
	}
	_, err := n.send(st)
	return err
}

// Stopping tells systemd the daemon is draining.
func (n *notifier) Stopping() error { _, err := n.send("STOPPING=1"); return err }

// Watchdog pings the watchdog.
func (n *notifier) Watchdog() error { _, err := n.send("WATCHDOG=1"); return err }

// runWatchdog pings every half WATCHDOG_USEC until ctx ends, as long as alive
// says the daemon's main loop still answers; a hung daemon then gets restarted.
func (n *notifier) runWatchdog(ctx context.Context, alive func() bool) {
	if n == nil || n.addr == nil || n.watchdog <= 0 {
		return
	}
	t := time.NewTicker(n.watchdog)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if alive == nil || alive() {
				_ = n.Watchdog()
			}
		}
	}
}
