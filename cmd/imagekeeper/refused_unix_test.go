//go:build unix

package main

import (
	"net"
	"strconv"
	"syscall"
	"testing"
)

// refusedAddr returns a 127.0.0.1 address that refuses connections for the whole
// test: a TCP socket bound to it that never listens. A closed listener's port is
// not enough: any process on the machine may bind it again meanwhile (another
// test's simulator, which then answers), and the test would see a cloud where it
// wants a refusal.
func refusedAddr(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	syscall.CloseOnExec(fd)
	t.Cleanup(func() { _ = syscall.Close(fd) })
	// No SO_REUSEADDR: nobody can bind the port while this socket holds it.
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(sa.(*syscall.SockaddrInet4).Port))
}
