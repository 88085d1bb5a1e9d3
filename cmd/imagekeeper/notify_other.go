//go:build !linux

package main

// monotonicUsec is only needed by systemd, which is Linux only.
func monotonicUsec() (int64, bool) { return 0, false }
